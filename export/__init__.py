"""ONNX export of trained SDNet runs (TensorFlow and tf2onnx).

``export.onnx_export.export_run`` writes an export folder; the TensorFlow-free runtime that
serves it is the ``sdnet_infer`` package in ``runtime/`` (its own distribution).
"""
