"""tools/misc/check_env.py: the report of this environment, and mismatches
made with another requirements file or monkeypatched versions."""
import importlib.metadata as metadata
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / 'tools' / 'misc' / 'check_env.py'
PINS = {
    'torch': '2.12.1',
    'torchvision': '0.27.1',
    'numpy': '1.26.4',
    'mmengine': '0.10.7',
    'mmcv': '2.1.0',
    'mmsegmentation': '1.2.2',
    'timm': '1.0.31'
}

check_env = load_script('tools/misc/check_env.py')


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO,
                          env=dict(os.environ, OMP_NUM_THREADS='1', **env),
                          capture_output=True, text=True, timeout=300)


def _requirements_with(tmp_path: Path, name: str, version: str) -> Path:
    """requirements.txt with the pin of ``name`` changed to ``version``."""
    lines = (REPO / 'requirements.txt').read_text().splitlines()
    changed = [f'{name}=={version}' if line.startswith(f'{name}==') else line
               for line in lines]
    assert changed != lines, f'{name} is not pinned'
    path = tmp_path / 'requirements.txt'
    path.write_text('\n'.join(changed) + '\n')
    return path


def _mismatch_lines(text: str) -> list:
    return [line for line in text.splitlines() if line.startswith('mismatch:')]


@pytest.fixture(scope='module')
def report_and_mismatch(tmp_path_factory):
    """The script's runs on this environment: with the repository's pins,
    and with torch pinned to a version that is not installed."""
    pins = _requirements_with(tmp_path_factory.mktemp('pins'), 'torch',
                              '0.0.1')
    return _run(), _run('--requirements', str(pins))


def test_this_environment_matches_its_pins(report_and_mismatch):
    proc, _ = report_and_mismatch
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for distribution, pin in PINS.items():
        (line, ) = [x for x in lines if x.split()[:2] == [distribution, 'ok']]
        assert line.split(None, 2)[1:] == [
            'ok', f'{metadata.version(distribution)} (pinned {pin})'
        ]
    (ops, ) = [x for x in lines if x.startswith('mmcv ops')]
    assert ops.split(None, 3)[2] == 'ok'
    assert ops.split(None, 3)[3].startswith('load; built with ')
    (where, ) = [x for x in lines if x.startswith('import regproxy')]
    assert where.split(None, 3)[2] == 'ok' and where.endswith('regproxy')
    # mmseg's own environment report is named after the checks.
    assert ('compilers, CUDA, GPUs: python -m mmseg.utils.collect_env'
            in lines)
    assert not _mismatch_lines(proc.stdout)
    assert proc.stdout.splitlines()[-1] == ('ok: the stack matches '
                                            f'{REPO / "requirements.txt"}')


def test_another_pin_gives_one_mismatch_line(report_and_mismatch):
    _, proc = report_and_mismatch
    assert proc.returncode == 1
    assert _mismatch_lines(proc.stdout) == [
        f'mismatch: torch: {metadata.version("torch")} is installed, '
        'requirements.txt pins 0.0.1; fix: bash tools/install.sh'
    ]
    assert proc.stderr.strip() == 'error: 1 mismatch(es) (listed above)'


def test_a_broken_dependency_is_named_not_blamed_on_mmcv(tmp_path):
    """mmengine failing to import breaks mmcv's import too: the report names
    the failure once, at the regproxy import, not as broken mmcv ops."""
    (tmp_path / 'mmengine').mkdir()
    (tmp_path / 'mmengine' / '__init__.py').write_text(
        "raise ImportError('mmengine is broken here')")
    proc = _run(PYTHONPATH=f'{tmp_path}{os.pathsep}{REPO}')
    assert proc.returncode == 1
    assert _mismatch_lines(proc.stdout) == [
        'mismatch: import regproxy: ImportError: mmengine is broken here; '
        'fix: bash tools/install.sh'
    ]


def test_monkeypatched_version_in_process(monkeypatch, capsys):
    real = check_env.installed_version
    monkeypatch.setattr(check_env, 'installed_version',
                        lambda d: '0.9.0' if d == 'timm' else real(d))
    with pytest.raises(SystemExit) as exit_info:
        check_env.main([])
    assert str(exit_info.value) == 'error: 1 mismatch(es) (listed above)'
    assert _mismatch_lines(capsys.readouterr().out) == [
        'mismatch: timm: 0.9.0 is installed, requirements.txt pins '
        f'{PINS["timm"]}; fix: bash tools/install.sh'
    ]


def test_missing_and_unpinned_packages(monkeypatch, tmp_path):
    monkeypatch.setattr(check_env, 'installed_version',
                        lambda d: None if d == 'timm' else '1.0')
    pins = tmp_path / 'pins.txt'
    pins.write_text('# comment\ntimm == 1.0.31  # why\nnumpy>=1\n')
    findings = {f.name: f for f in check_env.check_versions(pins)}
    assert findings['timm'] == (
        'timm', 'not installed (pinned 1.0.31)',
        'not installed; pins.txt pins 1.0.31', 'bash tools/install.sh')
    # Not pinned (or not with ==): reported only.
    assert findings['numpy'] == ('numpy', '1.0 (not pinned)', None,
                                 'bash tools/install.sh')
    assert list(findings) == list(PINS)


def test_local_version_part_is_not_a_mismatch(monkeypatch, tmp_path):
    monkeypatch.setattr(check_env, 'installed_version',
                        lambda d: '2.12.1+cu130')
    pins = tmp_path / 'pins.txt'
    pins.write_text('torch==2.12.1\n')
    (torch, *_) = check_env.check_versions(pins)
    assert torch.problem is None and torch.value == ('2.12.1+cu130 (pinned '
                                                     '2.12.1)')


@pytest.mark.parametrize('error, expected', [
    (ModuleNotFoundError("No module named 'mmcv._ext'"),
     "mmcv._ext does not load: ModuleNotFoundError: No module named "
     "'mmcv._ext'"),
    (ImportError('_ext.so: undefined symbol: _ZN3c104cuda'),
     'mmcv._ext does not load (built against another torch than the '
     f'installed {metadata.version("torch")}): ImportError: _ext.so: '
     'undefined symbol: _ZN3c104cuda'),
])
def test_ops_that_do_not_load(monkeypatch, error, expected):
    real = check_env.importlib.import_module

    def failing(name, *args):
        if name == 'mmcv._ext':
            raise error
        return real(name, *args)

    monkeypatch.setattr(check_env.importlib, 'import_module', failing)
    finding = check_env.check_mmcv_ops()
    assert finding.problem == expected
    assert finding.fix == (f'{sys.executable} -m pip uninstall -y mmcv '
                           'mmcv-lite && bash tools/install.sh')


def test_import_hint_names_the_error_and_the_mismatch(tmp_path, monkeypatch):
    pins = _requirements_with(tmp_path, 'mmengine', '0.0.1')
    hint = check_env.stack_import_hint(ImportError('no module named x'),
                                       pins)
    assert hint.splitlines() == [
        'cannot import the training stack: ImportError: no module named x',
        f'mismatch: mmengine: {metadata.version("mmengine")} is installed, '
        'requirements.txt pins 0.0.1; fix: bash tools/install.sh',
        'full report: python tools/misc/check_env.py'
    ]
    hint = check_env.stack_import_hint(ImportError('x'))
    assert hint.splitlines()[1] == ('the installed versions match '
                                    'requirements.txt; reinstall with bash '
                                    'tools/install.sh')

    def broken(_):
        raise RuntimeError('torch crashed')

    monkeypatch.setattr(check_env, 'run_checks', broken)
    hint = check_env.stack_import_hint(ImportError('no module named x'))
    assert hint.splitlines()[:2] == [
        'cannot import the training stack: ImportError: no module named x',
        '(the environment check failed too: torch crashed)'
    ]


def test_unreadable_requirements_file_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        check_env.main(['--requirements', str(tmp_path / 'missing.txt')])
    assert exit_info.value.code == 2
    assert (f'error: --requirements {tmp_path / "missing.txt"} is not a file'
            in capsys.readouterr().err)


def test_import_hint_through_run_path():
    """How train.py/test.py reach the helper when the stack is broken:
    runpy.run_path needs only the standard library."""
    hint = runpy.run_path(str(SCRIPT))['stack_import_hint'](
        ModuleNotFoundError("No module named 'mmseg'"))
    assert hint.startswith('cannot import the training stack: '
                           "ModuleNotFoundError: No module named 'mmseg'")
