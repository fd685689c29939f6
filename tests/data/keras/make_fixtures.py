#!/usr/bin/env python
"""Makes the Keras fixtures of tests/keras.rs (run once; the tests only read the files it writes).

    python3 -m venv /tmp/k3 && /tmp/k3/bin/pip install tensorflow-cpu safetensors
    python3 -m venv /tmp/k2 && /tmp/k2/bin/pip install tensorflow-cpu tf_keras safetensors
    /tmp/k3/bin/python tests/data/keras/make_fixtures.py            # Keras 3 files + predictions.json
    /tmp/k2/bin/python tests/data/keras/make_fixtures.py --keras2   # Keras 2 (tf_keras) files
    python3 -m venv /tmp/k33 && /tmp/k33/bin/pip install keras==3.3.3 'jax[cpu]' h5py packaging
    KERAS_BACKEND=jax /tmp/k33/bin/python tests/data/keras/make_fixtures.py --old-keras3
        # Keras 3.3: its files do not name the layers (`layers/conv2d/vars/0`), newer ones do

Full model (one file, Keras 3 `.keras`): the tutorial's model (../shared/peers/keras_fer.py) holding wgfer's
shipped weights (models/fer5.safetensors as it was before the retraining on the original pixels), and Keras' own probabilities for the first 20 faces of
../shared/data/emotion-sample.csv (predictions.json).

Small files (one per format): a model of three of the tutorial's layers (conv1, bn_conv1, Dense_final) whose
weights follow a formula the Rust tests recompute (`pattern`), saved the way Keras saves that format. Their
Dense_final kernel is [64, 5], not the tutorial's [512, 5]: loading one as a model must be refused.
"""
import argparse
import json
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
OUT = os.path.dirname(os.path.abspath(__file__))
FACES = 20


def pattern(k, n):
    """The values of the k-th weight tensor of the small model (also computed by tests/keras.rs)."""
    import numpy as np
    i = np.arange(n, dtype=np.int64)
    return (((i * 37 + k * 101) % 997) / 997.0 - 0.5).astype(np.float32)


def small_model(keras):
    layers = keras.layers
    x_in = layers.Input((48, 48, 1))
    x = layers.ZeroPadding2D((3, 3))(x_in)
    x = layers.Conv2D(64, (7, 7), strides=(2, 2), name="conv1")(x)
    x = layers.BatchNormalization(axis=3, name="bn_conv1")(x)
    x = layers.Activation("relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(5, activation="softmax", name="Dense_final")(x)
    model = keras.models.Model(inputs=x_in, outputs=x, name="Small")
    k = 0
    for layer in model.layers:
        values = []
        for w in layer.get_weights():
            values.append(pattern(k, w.size).reshape(w.shape))
            k += 1
        if values:
            layer.set_weights(values)
    return model


def tutorial_model(tf):
    sys.path.insert(0, os.path.join(ROOT, "..", "shared", "peers"))
    from keras_fer import build
    from safetensors.numpy import load_file
    model = build(tf)
    shipped = load_file(os.path.join(ROOT, "models", "fer5.safetensors"))
    suffixes = {"Conv2D": ["kernel", "bias"], "Dense": ["kernel", "bias"],
                "BatchNormalization": ["gamma", "beta", "moving_mean", "moving_variance"]}
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([shipped[f"{layer.name}.{s}"] for s in suffixes[layer.__class__.__name__]])
    return model


def faces():
    import numpy as np
    rows = []
    with open(os.path.join(ROOT, "..", "shared", "data", "emotion-sample.csv")) as f:
        next(f)
        for line in f:
            label, pixels = line.strip().split(",")
            rows.append((int(label), [int(p) for p in pixels.split()]))
            if len(rows) == FACES:
                break
    x = np.array([r[1] for r in rows], dtype=np.float32).reshape(-1, 48, 48, 1) / 255.0
    return x, [r[0] for r in rows]


def keras3():
    import tensorflow as tf
    import keras
    small = small_model(keras)
    small.save_weights(os.path.join(OUT, "small-keras3.weights.h5"))
    small.save(os.path.join(OUT, "small-keras3-legacy.h5"))
    model = tutorial_model(tf)
    # The full model is a model file: it lives with the others.
    model.save(os.path.join(OUT, "..", "..", "..", "models", "fer5-stretched.keras"))
    x, labels = faces()
    probs = model.predict(x, verbose=0)
    with open(os.path.join(OUT, "predictions.json"), "w") as f:
        json.dump({"made_by": f"keras {keras.__version__}, tensorflow {tf.__version__}",
                   "faces": f"the first {FACES} rows of ../shared/data/emotion-sample.csv",
                   "labels": labels, "probabilities": probs.astype(float).tolist()}, f, indent=1)


def old_keras3():
    import keras
    small = small_model(keras)
    small.save_weights(os.path.join(OUT, "small-keras3.3.weights.h5"))
    small.save(os.path.join(OUT, "small-keras3.3.keras"))


def keras2():
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tf_keras
    small = small_model(tf_keras)
    small.save(os.path.join(OUT, "small-keras2.h5"))
    small.save_weights(os.path.join(OUT, "small-keras2-weights.h5"))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--keras2", action="store_true", help="write the Keras 2 (tf_keras) files")
    ap.add_argument("--old-keras3", action="store_true", help="write the Keras 3.3 files")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = ap.parse_args()
    keras2() if args.keras2 else old_keras3() if args.old_keras3 else keras3()
