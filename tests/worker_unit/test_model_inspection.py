"""A model file is inspected before anything in it is deserialized: a Lambda layer whose marshalled
bytecode would touch a marker file is refused BY NAME and the marker never appears (h5, SavedModel,
.keras archive), through the share job's own entry point. Allowed models still load and plan."""

import h5py
import numpy as np
import pytest
import tensorflow as tf
from model_files import share_main, write_keras_archive

from tfe_worker import share
from tfe_worker.plan import ModelError, build_plan, check_config, inspect_model, load_keras

L = tf.keras.layers


def evil_model(marker):
    """A Sequential whose Lambda layer creates `marker` whenever Keras rebuilds (calls) it."""
    touch = eval(f"lambda x, p={str(marker)!r}: (open(p, 'a').close(), x)[1]")  # the payload
    return tf.keras.Sequential([L.Dense(4, input_shape=(3,)), L.Lambda(touch, name="evil"), L.Dense(2)])


@pytest.fixture
def evil_h5(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.h5"
    evil_model(marker).save(path)
    marker.unlink()  # building the model ran it once, here in the test; the file must not run it again
    return path, marker


def test_the_payload_really_runs_when_keras_loads_the_file(evil_h5):
    path, marker = evil_h5
    tf.keras.models.load_model(path, compile=False)  # what the share job did before the inspection
    assert marker.exists()


def test_share_job_refuses_lambda_by_name_without_running_it(tmp_path, evil_h5):
    path, marker = evil_h5
    rc, msg = share_main(tmp_path, path)
    assert rc == share.EXIT_INVALID
    assert msg.startswith("model rejected: unsupported layer 'evil' (Lambda); supported: Dense, Conv2D")
    assert not marker.exists()


def test_suffixless_configmap_key_is_inspected_too(tmp_path, evil_h5):
    path, marker = evil_h5
    key = tmp_path / "model"  # ConfigMap keys may carry no extension
    key.write_bytes(path.read_bytes())
    with pytest.raises(ModelError, match=r"'evil' \(Lambda\)"):
        load_keras(str(key))
    assert not marker.exists()


def test_saved_model_lambda_is_refused_from_keras_metadata(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_savedmodel"
    evil_model(marker).save(path)
    marker.unlink()
    assert (path / "keras_metadata.pb").exists()
    with pytest.raises(ModelError, match=r"unsupported layer 'evil' \(Lambda\)"):
        load_keras(str(path))
    assert not marker.exists()


def test_saved_model_without_keras_metadata_is_refused(tmp_path):
    path = tmp_path / "sm"
    tf.keras.Sequential([L.Dense(2, input_shape=(3,))]).save(path)
    (path / "keras_metadata.pb").unlink()
    with pytest.raises(ModelError, match=r"no keras_metadata\.pb"):
        inspect_model(str(path))


def test_allowed_saved_model_loads_and_plans(tmp_path):
    m = tf.keras.Sequential([L.Dense(4, activation="relu", input_shape=(3,)), L.Dense(2, activation="softmax")])
    m.save(tmp_path / "ok")
    assert inspect_model(str(tmp_path / "ok")) == "savedmodel"
    assert build_plan(load_keras(str(tmp_path / "ok")), "x").postprocess == "softmax"


def test_keras_v3_archive_with_lambda_is_refused_by_name(tmp_path):
    marker = tmp_path / "pwned"
    config = evil_model(marker).to_json()
    marker.unlink()
    path = tmp_path / "evil.keras"
    write_keras_archive(path, config, {})
    with pytest.raises(ModelError, match=r"unsupported layer 'evil' \(Lambda\)"):
        load_keras(str(path))
    ok = tmp_path / "ok.keras"
    write_keras_archive(ok, tf.keras.Sequential([L.Dense(2, input_shape=(3,))]).to_json())
    assert inspect_model(str(ok)) == "keras"
    with pytest.raises(ModelError, match=r"TF 2\.9\.1 cannot load"):
        load_keras(str(ok))
    assert not marker.exists()


def test_allowed_h5_loads_and_plans_as_before(tmp_path):
    tf.keras.utils.set_random_seed(0)
    m = tf.keras.Sequential([L.Reshape((4, 4, 1), input_shape=(16,)), L.Conv2D(2, 3), L.BatchNormalization(),
                             L.ReLU(), L.Flatten(), L.Dropout(0.1), L.Dense(3, activation="softmax")])
    m.save(tmp_path / "ok.h5")
    assert inspect_model(str(tmp_path / "ok.h5")) == "h5"
    loaded = load_keras(str(tmp_path / "ok.h5"))
    assert build_plan(loaded, "x").public() == build_plan(m, "x").public()
    x = np.ones((1, 16), np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), m.predict(x, verbose=0), rtol=1e-6)


def test_lstm_is_refused_by_name_before_loading(tmp_path):
    bad = tf.keras.Sequential([L.Reshape((8, 8), input_shape=(64,)), L.LSTM(4, name="lstm_encoder"), L.Dense(10)])
    bad.save(tmp_path / "bad.h5")
    rc, msg = share_main(tmp_path, tmp_path / "bad.h5")
    assert rc == share.EXIT_INVALID and "unsupported layer 'lstm_encoder' (LSTM); supported: Dense, Conv2D" in msg


def test_weights_only_and_non_model_files_are_refused(tmp_path):
    m = tf.keras.Sequential([L.Dense(2, input_shape=(3,))])
    m.save_weights(tmp_path / "w.h5")
    with pytest.raises(ModelError, match="weights only"):
        inspect_model(str(tmp_path / "w.h5"))
    (tmp_path / "junk.h5").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="neither an HDF5"):
        load_keras(str(tmp_path / "junk.h5"))
    with h5py.File(tmp_path / "bad_json.h5", "w") as f:
        f.attrs["model_config"] = b"{not json"
    with pytest.raises(ModelError, match="not valid JSON"):
        load_keras(str(tmp_path / "bad_json.h5"))


def dense(name, **extra):
    return {"class_name": "Dense", "config": {"name": name, "units": 2, **extra}}


@pytest.mark.parametrize("config,msg", [
    ({"class_name": "Sequential", "config": {"layers": [dense("d"), {"class_name": "Sequential",
                                                                     "config": {"name": "inner", "layers": []}}]}},
     r"unsupported layer 'inner' \(Sequential\)"),
    ({"class_name": "Functional", "config": {"layers": [{"class_name": "TimeDistributed", "name": "td",
                                                         "config": {"name": "td", "layer": {}}}]}},
     r"'td' \(TimeDistributed\)"),
    ({"class_name": "Sequential", "config": {"layers": [dense("d", activation={"function_type": "lambda"})]}},
     "layer 'd' carries a serialized Python function"),
    ({"class_name": "Lambda", "config": {"layers": []}}, "not a Sequential or functional"),
    ({"class_name": "Sequential", "config": {}}, "lists no layers"),
    ([], "no Keras model config"),
])
def test_config_allow_list(config, msg):
    with pytest.raises(ModelError, match=msg):
        check_config(config)


def test_config_allow_list_accepts_what_plan_supports():
    layers = [{"class_name": c, "config": {"name": c.lower()}} for c in
              ("InputLayer", "Dense", "Conv2D", "DepthwiseConv2D", "BatchNormalization", "ReLU", "Activation",
               "Softmax", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
               "Flatten", "Reshape", "Dropout")]
    cfg = {"class_name": "Functional", "config": {"layers": layers}}
    assert check_config(cfg) is cfg
