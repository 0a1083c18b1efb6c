"""``python -m glam`` works like the ``glam`` command."""

from __future__ import annotations

from glam.cli import main

if __name__ == "__main__":
    main()
