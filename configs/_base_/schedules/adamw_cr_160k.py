_base_ = './adamw.py'
# Cosine with restarts; the warm-up overlaps the first period.
param_scheduler = [
    {{_base_.warmup}},
    dict(type='CosineRestartLR', periods=[20000, 40000, 100000],
         restart_weights=[1, 0.5, 0.25], eta_min=0., by_epoch=False, begin=0,
         end=160000),
]
