"""The community-checkpoint route: ``.pth`` / ``.safetensors`` state dicts read without
running code (:mod:`.safety`), built by spandrel and traced to FX (:func:`backend.load_checkpoint`)."""
