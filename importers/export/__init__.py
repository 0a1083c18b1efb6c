"""The ``torch.export`` route: ``.pt2`` programs read without unpickling code
(:func:`backend.load_exported`), unlifted to a plain FX graph."""
