#!/usr/bin/env python
"""Where SDNet's validation swings came from: the validation Dice of the same weights after
each epoch, scored four ways.

    python results/acdc/validation_instability.py configs/sdnet-acdc-cpu.yaml \
        --set train.batchnorm_recalibration=0 --set train.jit_compile=true --set train.epochs=14 \
        --set data.path=/path/to/ACDC/training

(run as ``validation_instability.log`` shows, before the config had recalibration and 30
epochs, with the CPU protocol's other values as the config has them; stopped after epoch 7)

- moving: inference mode with BatchNorm's moving averages (what validation used);
- batchstat: BatchNorm in training mode on the validation batches of 16 (statistics restored);
- preciseBN: moving statistics recomputed from 30 batches of 16 training images with the
  current weights (the fix, ``sdnet_tf/training/batchnorm.py``);
- ema_w: an exponential moving average of the trainable weights (decay 0.99 per iteration)
  with the moving BatchNorm statistics of the current weights, which do not belong to the
  averaged weights: not a usable model, kept only because the log has the column.
The per-iteration weight average on the host makes each epoch about twice as slow as training.
"""
import sys, time, json
import numpy as np
from sdnet_tf.config import load_config, model_kwargs
from sdnet_tf.data.sources import load_arrays
import keras
from sdnet_tf.models import SDNet
from sdnet_tf.training.engines import sdnet_engine
from sdnet_tf.training.trainer import Trainer, validation_dice

sets = [a for a in sys.argv[2:] if a != "--set"]
cfg = load_config(sys.argv[1]).override(sets) if sets else load_config(sys.argv[1])
keras.utils.set_random_seed(cfg.train.seed)
arrays, desc = load_arrays(cfg)
print(desc.get("counts"), flush=True)
model = SDNet(**model_kwargs(cfg), seed=cfg.train.seed); model.build()
import tempfile; rd = tempfile.mkdtemp()
eng = sdnet_engine(model, cfg, run_dir=rd)
tr = Trainer(model, arrays, cfg, rd, engine=eng, progress=False)
nets = [model.anatomy_encoder, model.segmentor]
bn_layers = [l for n in nets for l in n._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
print("BN layers", len(bn_layers), flush=True)
va, vm = arrays.validation_images, arrays.validation_masks
def seg(x, training):
    return np.concatenate([np.asarray(model.segment(x[i:i+16], training=training)) for i in range(0, len(x), 16)])
def snapshot(): return [v.numpy().copy() for v in model.variables]
def restore(s):
    for v, a in zip(model.variables, s): v.assign(a)
ema = None; decay = 0.99
per = 100
for epoch in range(int(cfg.train.epochs)):
    t0 = time.time()
    for it in range(per):
        tr.train_iteration()
        w = [v.numpy() for v in model.trainable_variables]
        ema = [a.copy() for a in w] if ema is None else [decay*e + (1-decay)*a for e, a in zip(ema, w)]
    t1 = time.time()
    a = validation_dice(seg(va, False), vm)
    s = snapshot()
    b = validation_dice(seg(va, True), vm); restore(s)
    # precise BN: stats from 50 training batches of 16 labelled images, current weights
    rng = np.random.default_rng(epoch)
    stats = {id(l): [0, 0] for l in bn_layers}
    for l in bn_layers: l.momentum_saved = l.momentum
    # cumulative average via eager calls with varying momentum
    k = 0
    imgs = np.concatenate([arrays.labelled_images, arrays.unlabelled_images])
    for j in range(30):
        k += 1
        for l in bn_layers: l.momentum = (k - 1) / k
        idx = rng.choice(len(imgs), 16, replace=False)
        model.segment(imgs[idx], training=True)
    for l in bn_layers: l.momentum = l.momentum_saved
    c = validation_dice(seg(va, False), vm)
    restore(s)
    for v, e in zip(model.trainable_variables, ema): v.assign(e)
    d = validation_dice(seg(va, False), vm)
    restore(s)
    print(json.dumps({"epoch": epoch+1, "moving": round(a,4), "batchstat": round(b,4), "preciseBN": round(c,4),
                      "ema_w": round(d,4), "train_s": round(t1-t0,1)}), flush=True)
