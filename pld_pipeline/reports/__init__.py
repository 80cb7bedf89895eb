"""Reports over many student runs: seed summaries, sweep tables and plots, sweeps side by side.

Read by the sweep flow and `pld report`; they read finished runs' results and import no
torch, so `pld report` stays fast.
"""
