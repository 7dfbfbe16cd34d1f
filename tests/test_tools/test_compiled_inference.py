"""Compiled inference (torch.compile, CUDA graphs on a GPU) gives eager's
outputs. On this CPU each compilation takes 20-80 s: the tests that compile
are slow."""
import pytest
import torch

from tests.test_tools.test_benchmark import benchmark
from tests.test_tools.test_train_test_cli import (  # noqa: F401
    _test, single_test, test_script, tiny_config, trained)
from tests.tiny_models import tiny_segmentor


@pytest.mark.slow
def test_compiled_segmentor_matches_eager():
    torch.manual_seed(0)
    model = tiny_segmentor(mode='slide')
    image = torch.randn(1, 3, 100, 150)  # 6 windows of 64x64, padded
    metas = [dict(img_shape=(100, 150), ori_shape=(100, 150))]
    with torch.no_grad():
        eager = model.inference(image, [dict(m) for m in metas])
        test_script.compile_inference(model)
        compiled = model.inference(image, [dict(m) for m in metas])
        torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
        # each call's logits are its own (CUDA graphs reuse their buffer)
        window = dict(img_shape=(64, 64))
        first = model.encode_decode(image[..., :64, :64], [dict(window)])
        kept = first.clone()
        model.encode_decode(image[..., 36:, 86:], [dict(window)])
        assert torch.equal(first, kept)


@pytest.mark.slow
def test_test_py_compile_gives_the_same_metrics(tiny_config, trained,
                                                single_test, tmp_path):
    metrics = _test(str(tiny_config), str(trained / 'iter_4.pth'),
                    '--work-dir', str(tmp_path), '--compile')
    for key in ('aAcc', 'mIoU', 'mAcc'):
        assert metrics[key] == pytest.approx(single_test[0][key], abs=1e-6)


@pytest.mark.slow
def test_benchmark_compares_compiled_with_eager(tiny, capsys):  # noqa: F811
    benchmark.main([
        tiny[0], '--shape', '64', '64', '--compile', '--iters', '2',
        '--warmup', '1', '--dtypes', 'float32'
    ])
    out = capsys.readouterr().out
    assert 'no gain for inference on the CPU' in out
    assert 'float32 logits, compiled vs ours' in out
    diff = float(out.split('max |diff| ')[1].split()[0])
    assert diff <= 1e-5
    assert 'compiled' in out.split('reference / ours')[0]


def test_every_inference_path_runs_the_compiled_parts(monkeypatch):
    calls = []

    def fake_compile(function, mode):
        def run(*args):
            calls.append(function.__name__)
            return function(*args)
        return run

    monkeypatch.setattr(torch, 'compile', fake_compile)
    for mode in ('whole', 'slide'):
        model = tiny_segmentor(mode=mode).eval()
        test_script.compile_inference(model)
        calls.clear()
        with torch.no_grad():
            model.predict(torch.randn(1, 3, 100, 150))
        assert 'extract_feat' in calls and 'forward' in calls, mode


def test_benchmark_compile_is_for_inference():
    with pytest.raises(SystemExit):
        benchmark.parse_args(['cfg.py', '--compile', '--train'])
