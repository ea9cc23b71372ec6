"""Turn a Keras model into a private-inference plan, before anything is shared.

A plan is the public architecture (a list of simple layer specs) plus the plaintext weights
it needs. It is built only in the share job. Unsupported layers are refused here with a
message that names the layer; BatchNormalization is folded into the preceding layer; a final
softmax/sigmoid is stripped and recorded so that the client applies it.

A model file is inspected before anything in it is deserialized (`inspect_model`): its Keras
config is read as plain JSON (the HDF5 `model_config` attribute, `config.json` of a .keras
archive, or the `keras_metadata.pb` protobuf of a SavedModel directory) and every layer class
is checked BY NAME against `ALLOWED_LAYERS`. A Lambda layer (marshalled Python bytecode that
Keras would run while rebuilding the model) or any other layer outside the allow-list is
refused without running; only then is the model loaded, with compile=False and no
custom_objects (TF 2.9.1 has no safe_mode).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

SUPPORTED = ("Dense", "Conv2D", "DepthwiseConv2D", "ReLU", "Activation(relu|sigmoid|linear)",
             "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
             "Flatten", "Reshape", "BatchNormalization (folded into the preceding Dense/Conv)",
             "Dropout (identity at inference)", "final Softmax/sigmoid (applied by the client)")
_WEIGHTED = ("Dense", "Conv2D", "DepthwiseConv2D")
_DROPOUTS = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianDropout", "GaussianNoise", "AlphaDropout")
INPUT_BOUND = 2.0 ** 11  # fixed point: 11 integral bits


class ModelError(ValueError):
    """The model cannot be served privately; the message says what to change."""


@dataclass
class LayerSpec:
    kind: str
    config: dict[str, Any]
    weights: list[npt.NDArray[np.float32]] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return {"kind": self.kind, "config": self.config, "weightShapes": [list(w.shape) for w in self.weights]}


@dataclass
class Plan:
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    layers: list[LayerSpec]
    postprocess: str
    digest: str

    @property
    def weights(self) -> list[npt.NDArray[np.float32]]:
        return [w for layer in self.layers for w in layer.weights]

    def public(self) -> dict[str, Any]:
        return {"inputShape": list(self.input_shape), "outputShape": list(self.output_shape),
                "layers": [layer.public() for layer in self.layers], "postprocess": self.postprocess,
                "modelDigest": self.digest}


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    if os.path.isdir(path):  # SavedModel directory: hash every file, in a stable order
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                h.update(os.path.relpath(full, path).encode())
                with open(full, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
    else:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _act_name(layer: Any) -> str:
    act = getattr(layer, "activation", None)
    name = getattr(act, "__name__", None) or str(act)
    return "linear" if name in ("linear", "None") else name


def _unsupported(layer: Any, why: str = "") -> ModelError:
    extra = f": {why}" if why else ""
    return ModelError(f"unsupported layer '{layer.name}' ({type(layer).__name__}){extra}; "
                      f"supported: {', '.join(SUPPORTED)}")


def _chain(model: Any) -> list[Any]:
    """The model's layers, if they form one chain (Sequential or a linear functional model)."""
    import tensorflow as tf

    if isinstance(model, tf.keras.Sequential):
        return list(model.layers)
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError("only single-input, single-output models can be served privately")
    layers = [lay for lay in model.layers if type(lay).__name__ != "InputLayer"]
    prev = model.inputs[0]
    for lay in layers:
        if lay.input is not prev and getattr(lay.input, "ref", lambda: None)() != prev.ref():
            raise ModelError(f"layer '{lay.name}' does not take the previous layer's output: only a plain "
                             f"chain of layers (Sequential-shaped model) can be served privately")
        prev = lay.output
    return layers


def _fold_bn(prev: LayerSpec, bn: Any) -> None:
    gamma, beta, mean, var = (bn.gamma.numpy() if bn.gamma is not None else None,
                              bn.beta.numpy() if bn.beta is not None else None,
                              bn.moving_mean.numpy(), bn.moving_variance.numpy())
    scale = (gamma if gamma is not None else 1.0) / np.sqrt(var + bn.epsilon)
    shift = (beta if beta is not None else 0.0) - mean * scale
    kernel = prev.weights[0]
    if prev.kind == "DepthwiseConv2D":
        _, _, cin, mult = kernel.shape
        kernel = kernel * scale.reshape(cin, mult)
    else:
        kernel = kernel * scale  # last axis is the output channel for Dense and Conv2D
    bias = prev.weights[1] if prev.config.get("use_bias") else np.zeros(scale.shape, kernel.dtype)
    prev.weights = [kernel.astype(np.float32), (bias * scale + shift).astype(np.float32)]
    prev.config["use_bias"] = True


def build_plan(model: Any, digest: str) -> Plan:
    """Analyse a loaded tf.keras model. Raises ModelError naming the first offending layer."""
    layers = _chain(model)
    in_shape = tuple(int(d) for d in model.input_shape[1:]) if model.input_shape else ()
    if not in_shape or any(d is None for d in model.input_shape[1:]):
        raise ModelError(f"the model input must have a fixed shape (got {model.input_shape}); "
                         f"build the model with an explicit input_shape")
    out: list[LayerSpec] = []
    post = "none"
    for pos, lay in enumerate(layers):
        kind = type(lay).__name__
        last = pos == len(layers) - 1
        if kind == "InputLayer" or kind in _DROPOUTS:
            continue
        if kind in _WEIGHTED:
            act = _act_name(lay)
            if act in ("softmax", "sigmoid") and last:
                post, act = act, "linear"
            elif act not in ("linear", "relu", "sigmoid"):
                raise _unsupported(lay, f"activation '{act}' (only relu, sigmoid and a final softmax)")
            cfg: dict[str, Any] = {"activation": None if act == "linear" else act, "use_bias": bool(lay.use_bias)}
            if kind == "Dense":
                if len(lay.input_shape) != 2:
                    raise _unsupported(lay, f"Dense on a rank-{len(lay.input_shape)} input; add Flatten first")
                cfg["units"] = int(lay.units)
            else:
                if tuple(lay.dilation_rate) != (1, 1):
                    raise _unsupported(lay, "dilation_rate other than 1")
                if lay.data_format != "channels_last":
                    raise _unsupported(lay, "data_format must be channels_last")
                cfg.update(kernel_size=list(lay.kernel_size), strides=list(lay.strides), padding=lay.padding.upper())
                if kind == "Conv2D":
                    if getattr(lay, "groups", 1) != 1:
                        raise _unsupported(lay, "grouped convolution")
                    cfg["filters"] = int(lay.filters)
                else:
                    cfg["depth_multiplier"] = int(lay.depth_multiplier)
            out.append(LayerSpec(kind, cfg, [np.asarray(w, np.float32) for w in lay.get_weights()]))
        elif kind == "BatchNormalization":
            prev = out[-1] if out else None
            if prev is None or prev.kind not in _WEIGHTED or prev.config.get("activation"):
                raise _unsupported(lay, "BatchNormalization must directly follow a Dense/Conv2D/DepthwiseConv2D "
                                        "layer with a linear activation, so that it can be folded into it")
            _fold_bn(prev, lay)
        elif kind == "ReLU":
            if lay.max_value is not None or float(lay.negative_slope) != 0.0 or float(lay.threshold) != 0.0:
                raise _unsupported(lay, "only the plain ReLU (no max_value, slope or threshold)")
            out.append(LayerSpec("ReLU", {}))
        elif kind in ("Activation", "Softmax"):
            act = "softmax" if kind == "Softmax" else _act_name(lay)
            if act in ("softmax", "sigmoid") and last:
                post = act
            elif act == "linear":
                continue
            elif act in ("relu", "sigmoid"):
                out.append(LayerSpec("Activation", {"activation": act}))
            else:
                raise _unsupported(lay, f"activation '{act}'" + (" (softmax only as the last layer)"
                                                                 if act == "softmax" else ""))
        elif kind in ("MaxPooling2D", "AveragePooling2D"):
            out.append(LayerSpec(kind, {"pool_size": list(lay.pool_size), "strides": list(lay.strides),
                                        "padding": lay.padding.upper()}))
        elif kind in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
            out.append(LayerSpec(kind, {}))
        elif kind == "Flatten":
            out.append(LayerSpec("Flatten", {}))
        elif kind == "Reshape":
            out.append(LayerSpec("Reshape", {"target_shape": [int(d) for d in lay.target_shape]}))
        else:
            raise _unsupported(lay)
    if not any(s.kind in _WEIGHTED for s in out):
        raise ModelError("the model has no Dense or convolution layer: nothing to serve privately")
    for s in out:
        for w in s.weights:
            if w.size and float(np.max(np.abs(w))) >= INPUT_BOUND:
                raise ModelError(f"a weight of layer kind {s.kind} has magnitude >= 2^11 and cannot be "
                                 f"represented in fixed point; rescale the model")
    out_shape = tuple(int(d) for d in model.output_shape[1:])
    return Plan(in_shape, out_shape, out, post, digest)


# Layer class names a model may contain, as Keras writes them in the config (the classes build_plan
# handles; aliases such as Convolution2D are not accepted). Anything else is refused before loading.
ALLOWED_LAYERS = frozenset({"InputLayer", *_WEIGHTED, "BatchNormalization", "ReLU", "Activation", "Softmax",
                            "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
                            "Flatten", "Reshape", *_DROPOUTS})
MODEL_CLASSES = frozenset({"Sequential", "Functional", "Model"})  # the outermost object only: no nesting
MAX_CONFIG_BYTES = 16 << 20
# SavedModel object kinds (keras_metadata.pb identifiers) that are layers and must pass the allow-list.
_SAVED_LAYER_IDS = ("_tf_keras_layer", "_tf_keras_input_layer", "_tf_keras_network", "_tf_keras_model",
                    "_tf_keras_sequential", "_tf_keras_rnn_layer")


def _refuse(name: object, cls: object) -> ModelError:
    return ModelError(f"unsupported layer '{name}' ({cls}); supported: {', '.join(SUPPORTED)}")


def _no_code(obj: object, where: str, depth: int = 0) -> None:
    """Belt and braces: no serialized Python function (Keras func_dump) anywhere in the config."""
    if depth > 32:
        raise ModelError(f"the config of {where} is nested too deeply")
    if isinstance(obj, dict):
        if "function_type" in obj or ("function" in obj and isinstance(obj.get("function"), (list, dict))):
            raise ModelError(f"{where} carries a serialized Python function; refused without running it")
        for v in obj.values():
            _no_code(v, where, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            _no_code(v, where, depth + 1)


def check_config(config: object) -> dict[str, Any]:
    """Check a Keras model config (parsed JSON) against the allow-list, by class name only.

    Returns the config. Raises ModelError naming the first layer outside the allow-list."""
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise ModelError("the model file holds no Keras model config")
    cls = config.get("class_name")
    if cls not in MODEL_CLASSES:
        raise ModelError(f"the model is a {cls!r}, not a Sequential or functional Keras model")
    layers = config["config"].get("layers")
    if not isinstance(layers, list):
        raise ModelError("the Keras model config lists no layers")
    for layer in layers:
        if not isinstance(layer, dict):
            raise ModelError("malformed Keras model config: a layer is not an object")
        lcfg = layer.get("config")
        name = layer.get("name") or (lcfg.get("name") if isinstance(lcfg, dict) else None) or "?"
        if layer.get("class_name") not in ALLOWED_LAYERS:
            raise _refuse(name, layer.get("class_name"))
        _no_code(lcfg, f"layer '{name}'")
    return config


def _json(raw: bytes | str, what: str) -> object:
    if len(raw) > MAX_CONFIG_BYTES:
        raise ModelError(f"{what} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise ModelError(f"{what} is not valid JSON: {str(e)[:200]}") from None


# How to get a file this TF 2.9.1 (Keras 2.9) can load, from Keras 3 (TensorFlow >= 2.16 saves
# .keras archives, and its .h5 files carry Keras 3 configs).
KERAS2_HOWTO = ("save the model as a Keras 2 HDF5 file instead: with TensorFlow <= 2.15, model.save('model.h5'); "
                "with TensorFlow >= 2.16 (Keras 3), pip install tf_keras, set TF_USE_LEGACY_KERAS=1 before importing "
                "TensorFlow, build or load the model with tf.keras and model.save('model.h5') (see docs/operator.md, "
                "Model sources)")


def _attr_text(v: object) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _h5_config(f: Any, base: str) -> object:
    version = _attr_text(f.attrs.get("keras_version", ""))
    if version.startswith("3."):
        raise ModelError(f"{base} was saved by Keras {version} (Keras 3), whose configs TF 2.9.1 cannot load; "
                         + KERAS2_HOWTO)
    raw = f.attrs.get("model_config")
    if raw is None:
        raise ModelError(f"{base} has no model_config: it holds weights only (save the whole model with "
                         f"model.save('model.h5'))")
    return _json(raw if isinstance(raw, (bytes, str)) else bytes(raw), f"model_config of {base}")


def _saved_model_config(path: str, base: str) -> None:
    """Check every layer recorded in a SavedModel's keras_metadata.pb, without loading anything."""
    meta = os.path.join(path, "keras_metadata.pb")
    if not os.path.isfile(meta):
        raise ModelError(f"SavedModel {base} has no keras_metadata.pb (not saved by Keras): it cannot be inspected "
                         f"safely; save it with model.save('model.h5')")
    from google.protobuf.message import DecodeError
    from keras.protobuf import saved_metadata_pb2  # a protobuf message class; parses, runs nothing

    with open(meta, "rb") as fh:
        data = fh.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ModelError(f"keras_metadata.pb of {base} is larger than {MAX_CONFIG_BYTES} bytes")
    saved = saved_metadata_pb2.SavedMetadata()
    try:
        saved.ParseFromString(data)
    except DecodeError as e:
        raise ModelError(f"keras_metadata.pb of {base} cannot be parsed: {e}") from None
    root: dict[str, Any] | None = None
    nodes: list[tuple[str, dict[str, Any]]] = []
    for node in saved.nodes:
        if node.identifier not in _SAVED_LAYER_IDS:
            continue  # metrics and other trackables are revived from the graph, never from Python code
        meta_obj = _json(node.metadata, f"keras_metadata.pb of {base}")
        if not isinstance(meta_obj, dict):
            raise ModelError(f"keras_metadata.pb of {base}: malformed node {node.node_path}")
        if node.node_path == "root":
            root = meta_obj
        else:
            nodes.append((str(meta_obj.get("name", node.node_path)), meta_obj))
    if root is None:
        raise ModelError(f"keras_metadata.pb of {base} records no Keras model")
    if isinstance(root.get("config"), dict) and "layers" in root["config"]:
        check_config(root)  # the model's own config, as in an .h5
    elif root.get("class_name") not in MODEL_CLASSES:
        raise ModelError(f"the model is a {root.get('class_name')!r}, not a Sequential or functional Keras model")
    for name, meta_obj in nodes:  # every layer object saved, whether or not the model config lists it
        if meta_obj.get("class_name") not in ALLOWED_LAYERS:
            raise _refuse(name, meta_obj.get("class_name"))
    for name, meta_obj in nodes:
        _no_code(meta_obj.get("config"), f"layer '{name}'")


def inspect_model(path: str) -> str:
    """Check a model file's Keras config against the allow-list WITHOUT deserializing anything.

    Returns its format: "h5" (HDF5, whatever the suffix), "keras" (a Keras v3 .keras zip archive) or
    "savedmodel" (a directory). Raises ModelError naming the first layer outside the allow-list."""
    import h5py

    base = os.path.basename(path.rstrip("/")) or path
    if not os.path.exists(path):
        raise ModelError(f"model file {path} does not exist")
    if os.path.isdir(path):
        _saved_model_config(path, base)
        return "savedmodel"
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            check_config(_h5_config(f, base))
        return "h5"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                info = z.getinfo("config.json")
                if info.file_size > MAX_CONFIG_BYTES:
                    raise ModelError(f"config.json of {base} is larger than {MAX_CONFIG_BYTES} bytes")
                raw = z.read(info)
        except (KeyError, zipfile.BadZipFile) as e:
            raise ModelError(f"{base} is a zip archive without a readable config.json: {e}") from None
        check_config(_json(raw, f"config.json of {base}"))
        return "keras"
    raise ModelError(f"{base} is neither an HDF5 Keras model (.h5), a .keras archive nor a SavedModel directory")


def _keras_archive_version(path: str) -> str:
    """' (Keras 3.3.3)' from a .keras archive's metadata.json, or ''."""
    try:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo("metadata.json")
            if info.file_size > MAX_CONFIG_BYTES:
                return ""
            meta = json.loads(z.read(info))
    except (KeyError, ValueError, OSError, zipfile.BadZipFile):
        return ""
    version = meta.get("keras_version") if isinstance(meta, dict) else None
    return f" (Keras {version})" if isinstance(version, str) and len(version) < 32 else ""


def load_keras(path: str) -> Any:
    """Inspect (see inspect_model), then load an HDF5 file or a SavedModel directory without compiling it.

    The HDF5 file is opened once: the config that was checked is the one that is loaded."""
    import h5py
    import tensorflow as tf

    fmt = inspect_model(path)
    base = os.path.basename(path.rstrip("/")) or path
    if fmt == "keras":
        raise ModelError(f"{base} is a Keras v3 .keras archive{_keras_archive_version(path)}, which TF 2.9.1 cannot "
                         "load; " + KERAS2_HOWTO)
    try:
        if fmt == "h5":
            with h5py.File(path, "r") as f:
                check_config(_h5_config(f, base))  # the same open file that load_model reads
                return tf.keras.models.load_model(f, compile=False)
        return tf.keras.models.load_model(path, compile=False)
    except (OSError, ValueError, ImportError, TypeError, KeyError) as e:
        raise ModelError(f"cannot load {base} as a Keras model: {str(e).splitlines()[0][:300]}") from None


def tfe_layer_args(spec: dict[str, Any], batch_input_shape: list[int] | None) -> dict[str, Any]:
    """Constructor kwargs for the tfe.keras layer of a public layer spec."""
    args = dict(spec["config"])
    if "kernel_size" in args:
        args["kernel_size"] = tuple(args["kernel_size"])
        args["strides"] = tuple(args["strides"])
    if "pool_size" in args:
        args["pool_size"] = tuple(args["pool_size"])
        args["strides"] = tuple(args["strides"]) if args.get("strides") else None
    if "target_shape" in args:
        args["target_shape"] = tuple(args["target_shape"])
    if batch_input_shape is not None:
        args["batch_input_shape"] = batch_input_shape
    return args
