# imagenet_wnids.py: python examples/imagenet_wnids.py /data/imagenet > imagenet1k_wnids.txt
import sys

from torchvision.datasets.imagenet import load_meta_file, parse_devkit_archive

root = sys.argv[1]
try:
    wnid_to_classes, _ = load_meta_file(root)  # ROOT/meta.bin
except RuntimeError:  # no meta.bin yet: parse the devkit tarball in ROOT (needs scipy)
    parse_devkit_archive(root)
    wnid_to_classes, _ = load_meta_file(root)
print("\n".join(sorted(wnid_to_classes)))
