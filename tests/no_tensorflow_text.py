"""The start of a subprocess script in which `import tensorflow_text` is impossible, as in stock TF
Serving: a meta-path finder refuses it before TensorFlow loads. It also defines `op_types(dir)`, the
op types of a SavedModel's graphs, read before the model is loaded (so only core ops are registered)."""
import textwrap

PRELUDE = textwrap.dedent('''
    import importlib.abc, json, os, sys

    class _NoTensorflowText(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow_text" or name.startswith("tensorflow_text."):
                raise ImportError("tensorflow_text is not available in TF Serving")
            return None

    sys.meta_path.insert(0, _NoTensorflowText())
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.framework import op_def_registry

    try:
        import tensorflow_text  # noqa: F401
        sys.exit("the tensorflow_text blocker does not work")
    except ImportError:
        pass

    def op_types(saved_model_dir):
        proto = saved_model_pb2.SavedModel()
        with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
            proto.ParseFromString(f.read())
        ops = set()
        for meta_graph in proto.meta_graphs:
            ops.update(node.op for node in meta_graph.graph_def.node)
            for function in meta_graph.graph_def.library.function:
                ops.update(node.op for node in function.node_def)
        return ops
''')
