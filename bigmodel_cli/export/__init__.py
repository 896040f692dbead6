"""`bigmodel export`: a saved classifier as ONNX for onnxruntime, and int8 that checks its own accuracy."""
