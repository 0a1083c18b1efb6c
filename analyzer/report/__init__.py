"""The report room: pictures people read (the paper's Fig. 3/4/5 as PNG/PDF figures, and
the self-contained HTML report of ``glam report`` / ``glam check --html``), made from archived runs. Imports ``glam.errors`` and
``glam.archive`` (figure data) only; never the engine, the gate or the CLI."""
