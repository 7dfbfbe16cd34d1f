"""Check the installed stack against requirements.txt and its compiled parts.

    python tools/misc/check_env.py [--requirements PATH]

Prints the versions of torch, torchvision, numpy, mmengine, mmcv,
mmsegmentation and timm next to their pins in requirements.txt, whether
mmcv's compiled ops load and run (and which compiler, CUDA and torch they
were built with), whether the stack and regproxy import, and the CUDA,
cuDNN and NCCL versions with the GPUs. Each mismatch gets one line naming
it and its fix; the exit status is 1 when there is one.

:func:`stack_import_hint` gives the same diagnosis as a message for scripts
whose import of the stack failed. Only the standard library is imported at
module level, so that this file loads when the stack does not.
"""
import argparse
import contextlib
import importlib
import importlib.metadata as metadata
import json
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO / 'requirements.txt'
INSTALL = 'bash tools/install.sh'
# (distribution, module) of the stack, in the order of their imports.
STACK = (
    ('torch', 'torch'),
    ('torchvision', 'torchvision'),
    ('numpy', 'numpy'),
    ('mmengine', 'mmengine'),
    ('mmcv', 'mmcv'),
    ('mmsegmentation', 'mmseg'),
    ('timm', 'timm'),
)


@dataclass
class Finding:
    """One line of the report.

    Args:
        name (str): what was checked (``torch``, ``mmcv ops``, ``CUDA``).
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


def _pip() -> str:
    return f'{sys.executable} -m pip'


def read_pins(path: Path) -> Dict[str, str]:
    """``name==version`` lines of a requirements file (lower-case names).

    Raises:
        FileNotFoundError: ``path`` does not exist.
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


def _base(version: str) -> str:
    """``2.12.1+cu130`` -> ``2.12.1``: pins name public versions."""
    return version.split('+')[0]


def check_versions(pins: Dict[str, str], requirements: Path) -> List[Finding]:
    """Each stack package's installed version against its pin."""
    findings = []
    for distribution, _ in STACK:
        pin = pins.get(distribution)
        version = installed_version(distribution)
        pinned = f'pinned {pin}' if pin else 'not pinned'
        if version is None:
            lite = (installed_version('mmcv-lite')
                    if distribution == 'mmcv' else None)
            if lite:
                findings.append(Finding(
                    distribution, f'mmcv-lite {lite} ({pinned})',
                    'mmcv-lite is installed, which has no compiled ops',
                    f'{_pip()} uninstall -y mmcv-lite && {INSTALL}'))
            else:
                findings.append(Finding(
                    distribution, f'not installed ({pinned})',
                    f'not installed; {requirements.name} pins {pin}',
                    INSTALL))
        elif pin and _base(version) != pin:
            findings.append(Finding(
                distribution, f'{version} ({pinned})',
                f'{version} is installed, {requirements.name} pins {pin}',
                INSTALL))
        else:
            findings.append(Finding(distribution, f'{version} ({pinned})'))
    return findings


def _import_problem(module: str) -> Optional[str]:
    try:
        importlib.import_module(module)
    except Exception as error:  # an import can fail in any way
        return f'import {module} fails: {type(error).__name__}: {error}'
    return None


def check_imports() -> List[Finding]:
    """Whether the stack and regproxy import (mmseg imports mmcv's ops),
    and whether regproxy is this checkout's."""
    findings = []
    editable = f'{_pip()} install -e . (or {INSTALL})'
    for module, fix in (('mmseg.models', INSTALL), ('timm', INSTALL),
                        ('regproxy', editable)):
        problem = _import_problem(module)
        where = 'fails' if problem else str(
            Path(sys.modules[module].__file__).parent)
        findings.append(Finding(f'import {module}', where, problem, fix))
    regproxy = findings[-1]
    if not regproxy.problem and Path(regproxy.value) != REPO / 'regproxy':
        regproxy.problem = (f'regproxy is imported from {regproxy.value}, '
                            f'not from this checkout ({REPO})')
    return findings


def _wheel_torch() -> Optional[str]:
    """The torch version mmcv was built for, when it was installed from
    tools/install.sh's wheel cache (``.../torch-<version>/mmcv-*.whl``)."""
    try:
        text = metadata.distribution('mmcv').read_text('direct_url.json')
    except metadata.PackageNotFoundError:
        return None
    match = re.search(r'/torch-([^/]+)/mmcv-[^/]*\.whl',
                      json.loads(text or '{}').get('url', ''))
    return match.group(1) if match else None


def _mmcv_ops_smoke() -> None:
    """Run one compiled op on the CPU."""
    import torch
    from mmcv.ops import nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.]])
    _, keep = nms(boxes, torch.tensor([0.9, 0.8]), iou_threshold=0.5)
    if keep.tolist() != [0]:
        raise RuntimeError(f'nms kept {keep.tolist()}, expected [0]')


def check_mmcv_ops() -> List[Finding]:
    """Whether ``mmcv._ext`` loads and runs, and what it was built with."""
    if installed_version('mmcv') is None:
        return []
    reinstall = f'{_pip()} uninstall -y mmcv && {INSTALL}'
    torch_version = installed_version('torch')
    if _import_problem('torch'):
        return []  # reported by the import checks; the ops need torch
    try:
        importlib.import_module('mmcv._ext')
    except ModuleNotFoundError:
        return [Finding('mmcv ops', 'missing',
                        'mmcv is installed without its compiled ops '
                        '(mmcv._ext; built without MMCV_WITH_OPS=1)',
                        reinstall)]
    except Exception as error:  # ImportError: undefined symbol, ...
        cause = f'{type(error).__name__}: {error}'
        hint = ''
        if 'undefined symbol' in str(error):
            hint = (' (built against another torch than the installed '
                    f'{torch_version})')
        return [Finding('mmcv ops', 'do not load',
                        f'mmcv._ext does not load{hint}: {cause}',
                        reinstall)]
    findings = []
    try:
        import mmcv.ops
        compiler = mmcv.ops.get_compiler_version()
        cuda = mmcv.ops.get_compiling_cuda_version()
        _mmcv_ops_smoke()
    except Exception as error:  # the ops load but do not work
        return [Finding('mmcv ops', 'do not run',
                        f'mmcv.ops fails: {type(error).__name__}: {error}',
                        reinstall)]
    built_for = _wheel_torch()
    cuda = 'without CUDA' if cuda == 'not available' else f'CUDA {cuda}'
    findings.append(Finding(
        'mmcv ops', f'load and run; built with {compiler}, {cuda}, '
        f'for torch {built_for or "unknown (not from the install.sh cache)"}'))
    if built_for and torch_version and _base(built_for) != _base(
            torch_version):
        findings[-1].problem = (f'mmcv was built for torch {built_for}, '
                                f'torch {torch_version} is installed')
        findings[-1].fix = reinstall
    return findings


def check_accelerators() -> List[Finding]:
    """CUDA, cuDNN and NCCL of torch, and the GPUs it sees."""
    try:
        import torch
    except Exception:  # reported by the import checks
        return []
    findings = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        available = torch.cuda.is_available()
        count = torch.cuda.device_count() if available else 0
        gpus = []
        for index in range(count):
            major, minor = torch.cuda.get_device_capability(index)
            gpus.append((torch.cuda.get_device_name(index), major, minor))
    build = torch.version.cuda
    cuda = Finding('CUDA', f'torch built for CUDA {build}, '
                   f'{count} GPU(s) visible' if build else
                   'torch built for the CPU only')
    cuda_warnings = [str(w.message).strip().splitlines()[0] for w in caught
                     if 'cuda' in str(w.message).lower()]
    if build and cuda_warnings:
        cuda.problem = f'CUDA does not initialise: {cuda_warnings[0]}'
        cuda.fix = ('install an NVIDIA driver for CUDA '
                    f'{build}, or the torch build that matches the driver')
    findings.append(cuda)
    arches = torch.cuda.get_arch_list() if available else []
    for index, (name, major, minor) in enumerate(gpus):
        gpu = Finding(f'GPU {index}', f'{name} (sm_{major}{minor})')
        ptx = [int(a[len('compute_'):]) for a in arches
               if a.startswith('compute_')]
        if (f'sm_{major}{minor}' not in arches
                and not any(p <= major * 10 + minor for p in ptx)):
            gpu.problem = (f'torch has no kernels for sm_{major}{minor} '
                           f'(it has {" ".join(arches)})')
            gpu.fix = (f'install a torch build for sm_{major}{minor} '
                       '(pytorch.org), then ' + INSTALL)
        findings.append(gpu)
    unused = '' if available else ' (no GPU to use it)'
    cudnn = 'not available'
    with contextlib.suppress(Exception):
        if torch.backends.cudnn.is_available():
            cudnn = _cudnn_version(torch.backends.cudnn.version()) + unused
    findings.append(Finding('cuDNN', cudnn))
    nccl = 'not available'
    with contextlib.suppress(Exception):
        if torch.distributed.is_available() and \
                torch.distributed.is_nccl_available():
            version = torch.cuda.nccl.version()
            nccl = ('.'.join(str(v) for v in version) if isinstance(
                version, tuple) else str(version)) + unused
    findings.append(Finding('NCCL', nccl))
    return findings


def _cudnn_version(number: int) -> str:
    """cuDNN's version number as text: 92000 -> 9.20.0, 8902 -> 8.9.2."""
    if number >= 90000:
        return f'{number // 10000}.{number % 10000 // 100}.{number % 100}'
    return f'{number // 1000}.{number % 1000 // 100}.{number % 100}'


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
    try:
        pins = read_pins(requirements)
    except OSError as error:
        findings.append(Finding(
            'requirements', str(requirements), f'cannot read it: {error}',
            f'pass the project\'s pins with --requirements {REQUIREMENTS}'))
        pins = None
    if pins is not None and not any(d in pins for d, _ in STACK):
        findings.append(Finding(
            'requirements', str(requirements),
            f'it pins none of {", ".join(d for d, _ in STACK)}',
            f'pass the project\'s pins with --requirements {REQUIREMENTS}'))
    findings += check_versions(pins or {}, Path(requirements))
    findings += check_mmcv_ops()
    findings += check_imports()
    findings += check_accelerators()
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


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Check the installed stack against the pins of '
        'requirements.txt and that mmcv\'s compiled ops load.')
    parser.add_argument(
        '--requirements',
        type=Path,
        default=REQUIREMENTS,
        help=f'pins to compare with (default: {REQUIREMENTS})')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> List[Finding]:
    """Print the report; exit with status 1 on a mismatch.

    Returns:
        list[Finding]: the report (when nothing is wrong).
    """
    args = parse_args(argv)
    findings = run_checks(args.requirements)
    width = max(len(f.name) for f in findings)
    for finding in findings:
        status = 'MISMATCH' if finding.problem else 'ok'
        print(f'{finding.name:<{width}}  {status:<8}  {finding.value}')
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
