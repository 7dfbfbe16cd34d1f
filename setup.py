from setuptools import find_packages, setup

setup(
    name='regproxy',
    version='1.0.0',
    description='RegionProxy (Semantic Segmentation by Early Region Proxy, '
    'CVPR 2022) as an mmsegmentation 1.x plugin',
    packages=find_packages(include=['regproxy', 'regproxy.*']),
    python_requires='>=3.9',
    install_requires=[
        'mmsegmentation>=1.2.2', 'mmcv>=2.0.0,<2.2.0', 'mmengine>=0.10',
        'timm>=1.0', 'einops'
    ],
)
