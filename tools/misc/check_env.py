"""Check the installed stack against requirements.txt and mmcv's ops.

    python tools/misc/check_env.py [--requirements PATH]

Its report: docs/troubleshooting.md. Only the standard library is imported
at module level: ``train.py`` and ``test.py`` run this file (``runpy``) for
:func:`stack_import_hint` when the stack fails to import.
"""
import argparse
import importlib
import importlib.metadata as metadata
import re
import sys
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence

REQUIREMENTS = Path(__file__).resolve().parents[2] / 'requirements.txt'
INSTALL = 'bash tools/install.sh'
# The distributions of the stack, in the order of their imports.
STACK = ('torch', 'torchvision', 'numpy', 'mmengine', 'mmcv', 'mmsegmentation',
         'timm')


class Finding(NamedTuple):
    """One line of the report: what was checked, what was found, and what
    is wrong (None when all is well) with its fix."""
    name: str
    value: str
    problem: Optional[str] = None
    fix: str = INSTALL

    def mismatch_line(self) -> str:
        return f'mismatch: {self.name}: {self.problem}; fix: {self.fix}'


def installed_version(distribution: str) -> Optional[str]:
    """The installed version of a distribution, None when absent."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def check_versions(requirements: Path) -> List[Finding]:
    """Each stack distribution's installed version against its
    ``name==version`` pin in ``requirements`` (the local part of a version,
    ``+cu130``, left out)."""
    pins = {
        name.lower(): version for name, version in re.findall(
            r'^\s*([\w.-]+)\s*==\s*([^\s;#]+)',
            Path(requirements).read_text(), re.MULTILINE)
    }
    findings = []
    for name in STACK:
        pin, version = pins.get(name), installed_version(name)
        value = (f'{version or "not installed"} '
                 f'({f"pinned {pin}" if pin else "not pinned"})')
        problem = None
        if version is None:
            problem = f'not installed; {requirements.name} pins {pin}'
        elif pin and version.split('+')[0] != pin:
            problem = f'{version} is installed, {requirements.name} pins {pin}'
        findings.append(Finding(name, value, problem))
    return findings


def check_mmcv_ops() -> Optional[Finding]:
    """Whether mmcv's compiled ops load and say what they were built with;
    None when mmcv itself does not import (the regproxy check names why)."""
    try:
        importlib.import_module('mmcv')
    except Exception:  # an import can fail in any way
        return None
    # mmcv-lite installs the same package without ops: remove both.
    fix = f'{sys.executable} -m pip uninstall -y mmcv mmcv-lite && {INSTALL}'
    try:
        ext = importlib.import_module('mmcv._ext')
        built = (f'{ext.get_compiler_version()}, CUDA '
                 f'{ext.get_compiling_cuda_version()}')
    except Exception as error:  # ModuleNotFoundError: built without ops
        hint = (' (built against another torch than the installed '
                f'{installed_version("torch")})'
                if 'undefined symbol' in str(error) else '')
        return Finding('mmcv ops', 'do not load',
                       f'mmcv._ext does not load{hint}: '
                       f'{type(error).__name__}: {error}', fix)
    return Finding('mmcv ops', f'load; built with {built}')


def check_regproxy() -> Finding:
    """Whether regproxy (with mmseg, mmcv and timm) imports, and from where."""
    try:
        import regproxy
    except Exception as error:  # an import can fail in any way
        return Finding('import regproxy', 'fails',
                       f'{type(error).__name__}: {error}')
    return Finding('import regproxy', str(Path(regproxy.__file__).parent))


def run_checks(requirements: Path = REQUIREMENTS) -> List[Finding]:
    """All checks against the pins of ``requirements``, in report order;
    those with a ``problem`` are the mismatches."""
    findings = [Finding('python', sys.executable)]
    findings += check_versions(Path(requirements))
    ops = check_mmcv_ops()
    return findings + ([ops] if ops else []) + [check_regproxy()]


def stack_import_hint(error: BaseException,
                      requirements: Path = REQUIREMENTS) -> str:
    """The message (several lines) for a script whose import of the stack
    failed with ``error``: the error, then every mismatch of
    :func:`run_checks` with its fix. Never raises."""
    lines = [f'cannot import the training stack: {type(error).__name__}: '
             f'{error}']
    try:
        mismatches = [f for f in run_checks(requirements) if f.problem]
    except Exception as failure:  # never hide the original error
        mismatches = []
        lines.append(f'(the environment check failed too: {failure})')
    lines += [f.mismatch_line() for f in mismatches]
    if not mismatches:
        lines.append(f'the installed versions match {Path(requirements).name}'
                     f'; reinstall with {INSTALL}')
    lines.append('full report: python tools/misc/check_env.py')
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> List[Finding]:
    """Print the report; exit with status 1 on a mismatch, else return
    the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--requirements', type=Path, default=REQUIREMENTS,
                        help=f'pins to compare with (default: {REQUIREMENTS})')
    args = parser.parse_args(argv)
    if not args.requirements.is_file():
        parser.error(f'--requirements {args.requirements} is not a file')
    findings = run_checks(args.requirements)
    width = max(len(f.name) for f in findings)
    for finding in findings:
        status = 'MISMATCH' if finding.problem else 'ok'
        print(f'{finding.name:<{width}}  {status:<8}  {finding.value}')
    print('compilers, CUDA, GPUs: python -m mmseg.utils.collect_env')
    mismatches = [f for f in findings if f.problem]
    if mismatches:
        print('\n' + '\n'.join(f.mismatch_line() for f in mismatches))
        sys.exit(f'error: {len(mismatches)} mismatch(es) (listed above)')
    print(f'\nok: the stack matches {args.requirements}')
    return findings


if __name__ == '__main__':
    main()
