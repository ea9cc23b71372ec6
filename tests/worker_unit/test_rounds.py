"""tfe_worker.rounds: messages, rounds and bytes read from a graph as TF's partitioner cuts it."""

import tensorflow as tf

from tfe_worker import rounds
from tfe_worker.plan import build_plan

L = tf.keras.layers
DEV = [f"/job:tfe/replica:0/task:{i}/device:CPU:0" for i in range(3)]


def test_hand_built_graph():
    """a (s0) -> b (s1) -> c (s0): two rounds; a second consumer of the same tensor on the same
    party is not a second message; an op on its own party adds no round; sizes come from shapes."""
    g = tf.Graph()
    with g.as_default():
        with tf.device(DEV[0]):
            setup = tf.zeros([4], tf.int64, name="setup")  # one-time: before `start`
        start = len(g.get_operations())
        with tf.device(DEV[0]):
            a = tf.add(setup, 1, name="a")
        with tf.device(DEV[1]):
            b = tf.multiply(a, 2, name="b")
            b2 = tf.subtract(a, 3, name="b2")  # the same tensor a, again to s1: no new message
            bb = tf.add(b, b2, name="bb")
        with tf.device(DEV[0]):
            tf.add(bb, setup, name="c")
        with tf.device(DEV[2]):
            tf.identity(setup, name="d")  # setup crosses to s2: a message, depth 1
    r = rounds.analyze(g, start)
    assert r["rounds"] == 2
    assert r["sent"]["server0"] == {"messages": 2, "bytes": 2 * 4 * 8}  # a -> s1, setup -> s2
    assert r["sent"]["server1"] == {"messages": 1, "bytes": 4 * 8}  # bb -> s0
    assert r["sent"]["server2"] == {"messages": 0, "bytes": 0}
    assert r["control_messages"] == 0 and r["unsized_messages"] == 0


def test_relu_costs_rounds_and_layers_add_up():
    lin = build_plan(tf.keras.Sequential([L.Dense(4, input_shape=(3,)), L.Dense(2)]), "x").public()
    relu = build_plan(tf.keras.Sequential([L.Dense(4, activation="relu", input_shape=(3,)), L.Dense(2)]),
                      "x").public()
    a, b = rounds.of_manifest(lin, 1), rounds.of_manifest(relu, 1)
    assert b["rounds"] > a["rounds"] > 0
    for r in (a, b):
        assert sum(lay["rounds"] for lay in r["layers"]) == r["rounds"]
        assert sum(lay["messages"] for lay in r["layers"]) <= sum(s["messages"] for s in r["sent"].values())
        # the coordinator sends serve's two arguments (batch id, call counter) to each player
        assert r["sent"]["coordinator"]["messages"] == 9
    # a larger batch: the same rounds, more bytes
    b4 = rounds.of_manifest(relu, 4)
    assert b4["rounds"] == b["rounds"]
    assert b4["sent"]["server0"]["bytes"] > b["sent"]["server0"]["bytes"]
