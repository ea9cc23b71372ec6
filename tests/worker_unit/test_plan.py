"""Keras -> private plan: refusals name the layer, BatchNormalization folds exactly, a final
softmax is stripped for the client. Whole-object comparisons of the public plan."""

import numpy as np
import pytest
import tensorflow as tf

from tfe_worker.plan import ModelError, build_plan

L = tf.keras.layers


def forward(plan, x):
    """Plain numpy forward pass of a dense-only plan (reference for folding)."""
    for s in plan.layers:
        if s.kind == "Dense":
            x = x @ s.weights[0] + (s.weights[1] if s.config["use_bias"] else 0)
            if s.config["activation"] == "relu":
                x = np.maximum(x, 0)
        elif s.kind == "ReLU":
            x = np.maximum(x, 0)
    return x


def test_mlp_plan_whole_object_and_softmax_stripped():
    tf.keras.utils.set_random_seed(1)
    m = tf.keras.Sequential([L.Dense(8, activation="relu", input_shape=(4,)), L.Dropout(0.5),
                             L.Dense(3, activation="softmax")])
    p = build_plan(m, "d" * 64)
    assert p.public() == {
        "inputShape": [4], "outputShape": [3], "postprocess": "softmax", "modelDigest": "d" * 64,
        "layers": [
            {"kind": "Dense", "config": {"activation": "relu", "use_bias": True, "units": 8},
             "weightShapes": [[4, 8], [8]]},
            {"kind": "Dense", "config": {"activation": None, "use_bias": True, "units": 3},
             "weightShapes": [[8, 3], [3]]},
        ]}
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    logits = forward(p, x)
    np.testing.assert_allclose(tf.nn.softmax(logits).numpy(), m.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_batchnorm_is_folded_into_the_dense_layer():
    tf.keras.utils.set_random_seed(2)
    m = tf.keras.Sequential([L.Dense(6, input_shape=(5,)), L.BatchNormalization(), L.ReLU(), L.Dense(2)])
    bn = m.layers[1]
    rng = np.random.default_rng(3)
    bn.set_weights([rng.uniform(0.5, 2, 6), rng.normal(size=6), rng.normal(size=6), rng.uniform(0.5, 3, 6)])
    p = build_plan(m, "x")
    assert [s.kind for s in p.layers] == ["Dense", "ReLU", "Dense"]
    x = rng.normal(size=(7, 5)).astype(np.float32)
    np.testing.assert_allclose(forward(p, x), m.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


def test_cnn_plan_configs():
    m = tf.keras.Sequential([L.Reshape((8, 8, 1), input_shape=(64,)), L.Conv2D(4, 3, activation="relu"),
                             L.AveragePooling2D(2), L.Flatten(), L.Dense(10), L.Activation("softmax")])
    p = build_plan(m, "x")
    assert [(s.kind, s.config) for s in p.layers] == [
        ("Reshape", {"target_shape": [8, 8, 1]}),
        ("Conv2D", {"activation": "relu", "use_bias": True, "kernel_size": [3, 3], "strides": [1, 1],
                    "padding": "VALID", "filters": 4}),
        ("AveragePooling2D", {"pool_size": [2, 2], "strides": [2, 2], "padding": "VALID"}),
        ("Flatten", {}),
        ("Dense", {"activation": None, "use_bias": True, "units": 10}),
    ]
    assert p.postprocess == "softmax" and p.input_shape == (64,) and p.output_shape == (10,)


@pytest.mark.parametrize("layers,msg", [
    (lambda: [L.LSTM(4, input_shape=(3, 2)), L.Dense(1)], r"unsupported layer 'lstm\w*' \(LSTM\); supported: Dense"),
    (lambda: [L.Dense(4, activation="tanh", input_shape=(3,))], r"\(Dense\): activation 'tanh'"),
    (lambda: [L.Dense(4, input_shape=(3,)), L.Softmax(), L.Dense(2)], "softmax only as the last layer"),
    (lambda: [L.Dense(4, activation="relu", input_shape=(3,)), L.BatchNormalization()], "folded"),
    (lambda: [L.Dense(4, input_shape=(3,)), L.LeakyReLU()], r"\(LeakyReLU\)"),
])
def test_unsupported_models_are_refused_naming_the_layer(layers, msg):
    m = tf.keras.Sequential(layers())
    with pytest.raises(ModelError, match=msg):
        build_plan(m, "x")


def test_weights_out_of_fixed_point_range():
    m = tf.keras.Sequential([L.Dense(2, input_shape=(2,))])
    m.set_weights([np.full((2, 2), 5000.0), np.zeros(2)])
    with pytest.raises(ModelError, match="2\\^11"):
        build_plan(m, "x")


def test_non_chain_functional_model_is_refused():
    i = tf.keras.Input((4,))
    a, b = L.Dense(3)(i), L.Dense(3)(i)
    m = tf.keras.Model(i, L.Add()([a, b]))
    with pytest.raises(ModelError):
        build_plan(m, "x")
