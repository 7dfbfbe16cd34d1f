_base_ = './adamw.py'
param_scheduler = [
    {{_base_.warmup}},
    dict(type='PolyLR', power=1.0, eta_min=0., by_epoch=False, begin=1500,
         end=160000),
]
