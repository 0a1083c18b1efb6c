"""The TorchScript route: glam's direct translator ``ts2fx`` (ScriptModule graph to FX),
with TorchScript's own module as the parity reference (:func:`backend.load_torchscript`)."""
