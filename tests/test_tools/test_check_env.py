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


check_env = load_script('tools/misc/check_env.py')


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, str(SCRIPT), *args],
                          cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def _requirements_with(tmp_path: Path, name: str, version: str) -> Path:
    """requirements.txt with the pin of ``name`` changed to ``version``."""
    lines = (REPO / 'requirements.txt').read_text().splitlines()
    changed = [f'{name}=={version}' if line.startswith(f'{name}==') else line
               for line in lines]
    assert changed != lines, f'{name} is not pinned'
    path = tmp_path / 'requirements.txt'
    path.write_text('\n'.join(changed) + '\n')
    return path


@pytest.fixture(scope='module')
def report_and_mismatch(tmp_path_factory):
    """The script's runs on this environment: with the repository's pins,
    and with torch pinned to a version that is not installed."""
    pins = _requirements_with(tmp_path_factory.mktemp('pins'), 'torch',
                              '0.0.1')
    return _run(), _run('--requirements', str(pins))


def test_a_broken_dependency_is_named_not_blamed_on_mmcv(tmp_path):
    """mmengine failing to import breaks mmcv's import too: the report names
    the failure once, at the regproxy import, not as broken mmcv ops."""
    (tmp_path / 'mmengine').mkdir()
    (tmp_path / 'mmengine' / '__init__.py').write_text(
        "raise ImportError('mmengine is broken here')")
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PYTHONPATH=f'{tmp_path}{os.pathsep}{REPO}')
    proc = subprocess.run([sys.executable, str(SCRIPT)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert [line for line in proc.stdout.splitlines()
            if line.startswith('mismatch:')] == [
                'mismatch: import regproxy: ImportError: mmengine is broken '
                'here; fix: bash tools/install.sh'
            ]
    assert 'mmseg collect_env() fails' in proc.stdout


def test_this_environment_matches_its_pins(report_and_mismatch):
    proc, _ = report_and_mismatch
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    pins = check_env.read_pins(REPO / 'requirements.txt')
    for distribution in check_env.STACK:
        line = next(line for line in proc.stdout.splitlines()
                    if line.split()[:1] == [distribution])
        assert ' ok ' in line and metadata.version(distribution) in line
        assert f'pinned {pins[distribution]}' in line
    ops = next(line for line in proc.stdout.splitlines()
               if line.startswith('mmcv ops'))
    assert 'load and run' in ops and 'built with' in ops
    # mmseg's own environment report follows the checks.
    assert f'MMSegmentation: {metadata.version("mmsegmentation")}' in \
        proc.stdout
    assert 'mismatch' not in proc.stdout


def test_another_pin_gives_one_mismatch_line(report_and_mismatch):
    _, proc = report_and_mismatch
    assert proc.returncode == 1
    lines = [line for line in proc.stdout.splitlines()
             if line.startswith('mismatch:')]
    installed = metadata.version('torch')
    assert lines == [
        f'mismatch: torch: {installed} is installed, requirements.txt pins '
        '0.0.1; fix: bash tools/install.sh'
    ]
    assert 'error: 1 mismatch(es)' in proc.stderr


def test_monkeypatched_version_in_process(monkeypatch, capsys):
    real = check_env.installed_version
    monkeypatch.setattr(check_env, 'installed_version',
                        lambda d: '0.9.0' if d == 'timm' else real(d))
    with pytest.raises(SystemExit) as exit_info:
        check_env.main([])
    assert 'error: 1 mismatch' in str(exit_info.value)
    pin = check_env.read_pins(REPO / 'requirements.txt')['timm']
    assert (f'mismatch: timm: 0.9.0 is installed, requirements.txt pins '
            f'{pin}; fix: bash tools/install.sh') in capsys.readouterr().out


def test_missing_package_and_mmcv_lite(monkeypatch):
    versions = {'mmcv': None, 'mmcv-lite': '2.1.0', 'timm': None}
    real = check_env.installed_version
    monkeypatch.setattr(check_env, 'installed_version',
                        lambda d: versions[d] if d in versions else real(d))
    findings = {f.name: f for f in check_env.check_versions(
        {'mmcv': '2.1.0', 'timm': '1.0.31'}, Path('requirements.txt'))}
    assert 'mmcv-lite is installed' in findings['mmcv'].problem
    assert 'uninstall -y mmcv-lite' in findings['mmcv'].fix
    assert findings['timm'].problem == ('not installed; requirements.txt '
                                        'pins 1.0.31')
    assert findings['torch'].problem is None  # not pinned: reported only
    assert findings['torch'].value.endswith('(not pinned)')


@pytest.mark.parametrize('error, expected', [
    (ModuleNotFoundError("No module named 'mmcv._ext'"),
     'installed without its compiled ops'),
    (ImportError('_ext.so: undefined symbol: _ZN3c104cuda'),
     'built against another torch'),
])
def test_ops_that_do_not_load(monkeypatch, error, expected):
    real = check_env.importlib.import_module

    def failing(name, *args):
        if name == 'mmcv._ext':
            raise error
        return real(name, *args)

    monkeypatch.setattr(check_env.importlib, 'import_module', failing)
    finding = check_env.check_mmcv_ops()
    assert expected in finding.problem
    assert finding.fix.endswith('uninstall -y mmcv && bash tools/install.sh')


def test_import_hint_names_the_error_and_the_mismatch(tmp_path, monkeypatch):
    pins = _requirements_with(tmp_path, 'mmengine', '0.0.1')
    hint = check_env.stack_import_hint(ImportError('no module named x'),
                                       pins)
    lines = hint.splitlines()
    assert lines[0] == ('cannot import the training stack: ImportError: no '
                        'module named x')
    assert any(line.startswith('mismatch: mmengine: ') and
               line.endswith('fix: bash tools/install.sh') for line in lines)
    assert lines[-1] == 'full report: python tools/misc/check_env.py'

    def broken(_):
        raise RuntimeError('torch crashed')

    monkeypatch.setattr(check_env, 'run_checks', broken)
    hint = check_env.stack_import_hint(ImportError('no module named x'))
    assert 'no module named x' in hint and 'torch crashed' in hint


def test_unreadable_requirements_file_is_a_mismatch(tmp_path):
    findings = check_env.run_checks(tmp_path / 'missing.txt')
    (problem, ) = [f for f in findings if f.problem]
    assert problem.name == 'requirements'
    assert '--requirements' in problem.fix


def test_regproxy_from_another_folder_is_a_mismatch(monkeypatch, tmp_path):
    monkeypatch.setattr(check_env, 'REPO', tmp_path)
    finding = check_env.check_regproxy()
    assert finding.name == 'import regproxy'
    assert finding.problem == (f'regproxy is imported from {REPO / "regproxy"}'
                               f', not from this checkout ({tmp_path})')
    assert 'install -e .' in finding.fix


def test_import_hint_through_run_path():
    """How train.py/test.py reach the helper when the stack is broken:
    runpy.run_path needs only the standard library."""
    hint = runpy.run_path(str(SCRIPT))['stack_import_hint'](
        ModuleNotFoundError("No module named 'mmseg'"))
    assert hint.startswith('cannot import the training stack: '
                           "ModuleNotFoundError: No module named 'mmseg'")
