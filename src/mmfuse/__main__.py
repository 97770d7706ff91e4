"""``python -m mmfuse``: the same command line as ``mmfuse`` (what ``accelerate launch -m mmfuse train ...`` runs)."""

from mmfuse.cli import main

if __name__ == "__main__":
    main()
