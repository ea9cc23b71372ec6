"""Keras 3 files (TensorFlow >= 2.16 saves .keras archives by default, and its .h5 files carry
Keras 3 configs) are refused before anything is loaded, with a message that says how to save a
file this TF 2.9.1 can load. Through the share job's own entry point, as a user meets it."""

import h5py
import pytest
import tensorflow as tf
from model_files import share_main, write_keras_archive

from tfe_worker import share
from tfe_worker.plan import ModelError, build_plan, inspect_model, load_keras

L = tf.keras.layers
HOWTO = "TF_USE_LEGACY_KERAS=1"


def keras3_archive(path, version="3.3.3"):
    config = tf.keras.Sequential([L.Dense(2, input_shape=(3,))]).to_json()
    write_keras_archive(path, config, {"keras_version": version, "date_saved": "2026-01-01@00:00:00"}, weights=True)


def test_keras3_archive_is_refused_with_how_to_save_a_compatible_file(tmp_path):
    path = tmp_path / "model.keras"
    keras3_archive(path)
    rc, msg = share_main(tmp_path, path)
    assert rc == share.EXIT_INVALID
    assert msg.startswith("model rejected: model.keras is a Keras v3 .keras archive (Keras 3.3.3), which TF 2.9.1 "
                          "cannot load; save the model as a Keras 2 HDF5 file instead"), msg
    assert "model.save('model.h5')" in msg and HOWTO in msg and "pip install tf_keras" in msg


def test_keras3_archive_as_a_suffixless_configmap_key(tmp_path):
    path = tmp_path / "model"  # ConfigMap keys carry no extension: recognised by content
    keras3_archive(path)
    assert inspect_model(str(path)) == "keras"
    with pytest.raises(ModelError, match=HOWTO):
        load_keras(str(path))


def test_keras3_h5_is_refused_before_its_config_is_read(tmp_path):
    path = tmp_path / "model.h5"
    tf.keras.Sequential([L.Dense(2, input_shape=(3,))]).save(path)
    assert build_plan(load_keras(str(path)), "x").layers  # a Keras 2 file loads
    with h5py.File(path, "r+") as f:
        f.attrs["keras_version"] = "3.6.0"  # what Keras 3's model.save("model.h5") writes
    rc, msg = share_main(tmp_path, path)
    assert rc == share.EXIT_INVALID
    assert msg.startswith("model rejected: model.h5 was saved by Keras 3.6.0 (Keras 3), whose configs TF 2.9.1 "
                          "cannot load; save the model as a Keras 2 HDF5 file instead"), msg
    assert HOWTO in msg
