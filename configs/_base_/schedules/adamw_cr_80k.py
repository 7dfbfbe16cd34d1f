_base_ = './adamw.py'
param_scheduler = [
    {{_base_.warmup}},
    dict(type='CosineRestartLR', periods=[10000, 20000, 50000],
         restart_weights=[1, 0.5, 0.25], eta_min=0., by_epoch=False, begin=0,
         end=80000),
]
train_cfg = dict(max_iters=80000, val_interval=2000)
default_hooks = dict(checkpoint=dict(interval=2000))
