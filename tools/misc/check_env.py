"""Check the installed stack against requirements.txt and mmcv's compiled ops.

    python tools/misc/check_env.py [--requirements PATH]

Prints the installed versions of torch, torchvision, numpy, mmengine, mmcv,
mmsegmentation and timm (``importlib.metadata``) next to their pins in
requirements.txt, whether mmcv's compiled ops load and run (and what they
were built with), whether regproxy imports from this checkout, and then
mmseg's ``collect_env()`` report (Python, compilers, CUDA and the GPUs,
torch's build). Each mismatch gets one line naming it and its fix; the exit
status is 1 when there is one.

:func:`stack_import_hint` gives the same diagnosis as a message for scripts
whose import of the stack failed. Only the standard library is imported at
module level, so that this file loads when the stack does not.
"""
import argparse
import importlib
import importlib.metadata as metadata
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO / 'requirements.txt'
INSTALL = 'bash tools/install.sh'
PIP = f'{sys.executable} -m pip'
# The distributions of the stack, in the order of their imports.
STACK = ('torch', 'torchvision', 'numpy', 'mmengine', 'mmcv', 'mmsegmentation',
         'timm')


@dataclass
class Finding:
    """One line of the report.

    Args:
        name (str): what was checked (``torch``, ``mmcv ops``).
        value (str): what was found.
        problem (str, optional): what is wrong; None when all is well.
        fix (str, optional): how to fix the problem.
    """
    name: str
    value: str
    problem: Optional[str] = None
    fix: Optional[str] = None

    def mismatch_line(self) -> str:
        return f'mismatch: {self.name}: {self.problem}; fix: {self.fix}'


def read_pins(path: Path) -> Dict[str, str]:
    """``name==version`` lines of a requirements file (lower-case names).

    Raises:
        OSError: ``path`` cannot be read.
    """
    pins = {}
    for line in Path(path).read_text().splitlines():
        match = re.match(r'^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)', line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def installed_version(distribution: str) -> Optional[str]:
    """The installed version of a distribution, None when absent."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def check_versions(pins: Dict[str, str], requirements: Path) -> List[Finding]:
    """Each stack distribution's installed version against its pin (the
    local part, ``+cu130``, left out)."""
    findings = []
    for distribution in STACK:
        pin, version = pins.get(distribution), installed_version(distribution)
        pinned = f'pinned {pin}' if pin else 'not pinned'
        lite = distribution == 'mmcv' and installed_version('mmcv-lite')
        if version is None and lite:
            findings.append(Finding(
                distribution, f'mmcv-lite {lite} ({pinned})',
                'mmcv-lite is installed, which has no compiled ops',
                f'{PIP} uninstall -y mmcv-lite && {INSTALL}'))
        elif version is None:
            findings.append(Finding(
                distribution, f'not installed ({pinned})',
                f'not installed; {requirements.name} pins {pin}', INSTALL))
        elif pin and version.split('+')[0] != pin:
            findings.append(Finding(
                distribution, f'{version} ({pinned})',
                f'{version} is installed, {requirements.name} pins {pin}',
                INSTALL))
        else:
            findings.append(Finding(distribution, f'{version} ({pinned})'))
    return findings


def check_mmcv_ops() -> Optional[Finding]:
    """Whether ``mmcv._ext`` loads and runs one op (nms) on the CPU; None
    when the mmcv package itself does not import (the regproxy import check
    names the cause)."""
    try:
        importlib.import_module('mmcv')
    except Exception:  # an import can fail in any way
        return None
    finding = Finding('mmcv ops', 'do not load',
                      fix=f'{PIP} uninstall -y mmcv && {INSTALL}')
    try:
        importlib.import_module('mmcv._ext')
    except ModuleNotFoundError:
        finding.problem = ('mmcv is installed without its compiled ops '
                           '(mmcv._ext; built without MMCV_WITH_OPS=1)')
        return finding
    except Exception as error:  # ImportError: undefined symbol, ...
        hint = (' (built against another torch than the installed '
                f'{installed_version("torch")})'
                if 'undefined symbol' in str(error) else '')
        finding.problem = (f'mmcv._ext does not load{hint}: '
                           f'{type(error).__name__}: {error}')
        return finding
    try:
        import torch
        from mmcv.ops import (get_compiler_version,
                              get_compiling_cuda_version, nms)
        boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.]])
        _, keep = nms(boxes, torch.tensor([0.9, 0.8]), iou_threshold=0.5)
        if keep.tolist() != [0]:
            raise RuntimeError(f'nms kept {keep.tolist()}, expected [0]')
    except Exception as error:  # the ops load but do not work
        finding.value = 'do not run'
        finding.problem = f'mmcv.ops fails: {type(error).__name__}: {error}'
        return finding
    cuda = get_compiling_cuda_version()
    cuda = 'without CUDA' if cuda == 'not available' else f'CUDA {cuda}'
    return Finding('mmcv ops', 'load and run; built with '
                   f'{get_compiler_version()}, {cuda}')


def check_regproxy() -> Finding:
    """Whether regproxy (and with it mmseg, mmcv and timm) imports, and
    from this checkout."""
    try:
        import regproxy
    except Exception as error:  # an import can fail in any way
        return Finding('import regproxy', 'fails',
                       f'{type(error).__name__}: {error}', INSTALL)
    where = Path(regproxy.__file__).parent
    finding = Finding('import regproxy', str(where))
    if where != REPO / 'regproxy':
        finding.problem = (f'regproxy is imported from {where}, not from '
                           f'this checkout ({REPO})')
        finding.fix = f'{PIP} install -e . (or {INSTALL})'
    return finding


def run_checks(requirements: Path = REQUIREMENTS) -> List[Finding]:
    """All checks, in report order.

    Args:
        requirements (Path): the pins to compare with.

    Returns:
        list[Finding]: the report; the ones with a ``problem`` are the
        mismatches.
    """
    findings = [Finding('python', f'{sys.version.split()[0]} '
                        f'({sys.executable})')]
    pins = {}
    fix = f'pass the project\'s pins with --requirements {REQUIREMENTS}'
    try:
        pins = read_pins(requirements)
    except OSError as error:
        findings.append(Finding('requirements', str(requirements),
                                f'cannot read it: {error}', fix))
    else:
        if not set(STACK) & set(pins):
            findings.append(Finding('requirements', str(requirements),
                                    f'it pins none of {", ".join(STACK)}',
                                    fix))
    findings += check_versions(pins, Path(requirements))
    ops = check_mmcv_ops() if installed_version('mmcv') else None
    if ops:
        findings.append(ops)
    findings.append(check_regproxy())
    return findings


def stack_import_hint(error: BaseException,
                      requirements: Path = REQUIREMENTS) -> str:
    """A message for a script whose import of the stack failed.

    It names the failed import, every mismatch :func:`run_checks` finds and
    its fix. It never raises, whatever state the environment is in.

    Args:
        error (BaseException): the import error.
        requirements (Path): the pins to compare with.

    Returns:
        str: the message (several lines).
    """
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
                     '; reinstall with ' + INSTALL)
    lines.append('full report: python tools/misc/check_env.py')
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> List[Finding]:
    """Print the report; exit with status 1 on a mismatch.

    Returns:
        list[Finding]: the report (when nothing is wrong).
    """
    parser = argparse.ArgumentParser(
        description='Check the installed stack against the pins of '
        'requirements.txt and that mmcv\'s compiled ops load.')
    parser.add_argument(
        '--requirements',
        type=Path,
        default=REQUIREMENTS,
        help=f'pins to compare with (default: {REQUIREMENTS})')
    args = parser.parse_args(argv)
    findings = run_checks(args.requirements)
    width = max(len(f.name) for f in findings)
    for finding in findings:
        status = 'MISMATCH' if finding.problem else 'ok'
        print(f'{finding.name:<{width}}  {status:<8}  {finding.value}')
    try:
        from mmseg.utils import collect_env
        print('\nmmseg collect_env():')
        for key, value in collect_env().items():
            print(f'  {key}: {value}')
    except Exception as error:  # a broken stack is reported above
        print(f'(mmseg collect_env() fails: {type(error).__name__}: {error})')
    mismatches = [f for f in findings if f.problem]
    if mismatches:
        print()
        for finding in mismatches:
            print(finding.mismatch_line())
        sys.exit(f'error: {len(mismatches)} mismatch(es) (listed above)')
    print(f'\nok: the stack matches {args.requirements}')
    return findings


if __name__ == '__main__':
    main()
