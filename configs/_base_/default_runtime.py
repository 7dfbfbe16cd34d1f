default_scope = 'mmseg'
# Safe, checked checkpoint loading (regproxy/engine/runner.py).
runner_type = 'RegProxyRunner'
# False loads the matching part of a checkpoint of another model.
load_strict = True
# True unpickles checkpoint files in full (may run code from the file): only
# for files from a trusted source that need more than weights.
trust_checkpoint = False
custom_imports = dict(imports=['regproxy'], allow_failed_imports=False)
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),  # train.py/test.py use gloo on the CPU
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(
    type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
tta_model = dict(type='SegTTAModel')
custom_hooks = [
    # stop at the first NaN/inf loss, before it can be checkpointed
    dict(type='NonFiniteLossHook'),
    # random states in checkpoints: a resumed run continues identically
    dict(type='RNGStateHook'),
    # checkpoints that torch.load(weights_only=True) reads without help
    dict(type='WeightsOnlyCheckpointHook'),
    # num_classes against the dataset's classes; batches of ignored labels
    dict(type='LabelChecksHook'),
]
