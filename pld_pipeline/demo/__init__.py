"""The demo wing: Fashion-MNIST as an image folder, small models and the demo's plan."""
