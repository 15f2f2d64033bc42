"""
Python packaging of anytime_infer for a plain virtual environment (`make setup`).

On a ROS 2 install the package is built by colcon with CMakeLists.txt (ament_cmake),
which also generates the messages; this file serves `pip install -e .` in `.venv`.
"""
from setuptools import find_packages, setup

setup(
    name='anytime_infer',
    version='0.1.0',
    description='Anytime multi-exit inference for ROS 2 camera topics under an '
                'imprecise-computation real-time scheduler',
    license='Apache-2.0',
    packages=find_packages(include=['anytime_infer', 'anytime_infer.*']),
    package_data={'anytime_infer': ['models/*/*']},
    python_requires='>=3.10',
    entry_points={
        'console_scripts': [
            'anytime-infer = anytime_infer.cli:main',
            'anytime_infer_node = anytime_infer.node:main',
        ],
    },
)
