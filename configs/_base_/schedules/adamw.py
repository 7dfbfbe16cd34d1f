# AdamW of the published recipe; no weight decay on position embedding,
# cls/dist tokens and any norm layer.
optim_wrapper = dict(
    type='OptimWrapper',
    # fused: one kernel per tensor instead of a dozen (torch >= 2.4 has it
    # on CPU too); the update of the shapes model took 7.1 instead of
    # 24.1 ms on a 2-vCPU Xeon (AVX-512, AMX-BF16).
    optimizer=dict(
        type='AdamW',
        lr=6e-5,
        betas=(0.9, 0.999),
        weight_decay=0.01,
        fused=True),
    paramwise_cfg=dict(
        norm_decay_mult=0.,
        custom_keys={
            'pos_embed': dict(decay_mult=0.),
            'cls_token': dict(decay_mult=0.),
            'dist_token': dict(decay_mult=0.),
        }))
# The recipe's total batch (8 GPUs x 2 images; the shapes model: 1 x 16).
# train.py compares a run's with it; --auto-scale-lr (enable=True) scales the
# learning rate linearly to the run's, --accumulate auto keeps it.
auto_scale_lr = dict(enable=False, base_batch_size=16)
warmup = dict(
    type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000, val_interval=4000)
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # Written to a temporary file and renamed into place: a killed run never
    # leaves a truncated checkpoint under its final name.
    checkpoint=dict(
        type='CheckpointHook', by_epoch=False, interval=4000,
        max_keep_ckpts=3, backend_args=dict(backend='atomic_local')),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
