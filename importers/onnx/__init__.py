"""The ONNX route: onnx2torch plus glam's converters (registry keyed by (op, opset, domain)),
graph pre-passes, and onnxruntime as the parity reference (:func:`backend.load_onnx`)."""
