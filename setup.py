"""tfp_ircpm: Implicit Riemannian Concave Potential Maps for TensorFlow Probability."""

import setuptools

setuptools.setup(
    name='tfp_ircpm',
    version='0.1.0',
    description=('Implicit Riemannian Concave Potential Maps (Rezende & '
                 'Racanière 2021) as TensorFlow Probability bijectors on tori, '
                 'spheres and their products.'),
    packages=setuptools.find_packages(include=['tfp_ircpm', 'tfp_ircpm.*']),
    python_requires='>=3.11,<3.12',
    # Checked together on Python 3.11. TFP 0.25 refuses to import without
    # tf-keras; plain `tensorflow` pulls no CUDA wheels on Linux x86-64 (do not
    # mix in tensorflow-cpu: with tf-keras both TF wheels land in one folder).
    install_requires=[
        'tensorflow==2.21.0',
        'tensorflow-probability==0.25.0',
        'tf-keras==2.21.0',
        # TF 2.21 no longer pulls it in; the Keras TensorBoard callback
        # (tfp_ircpm.keras) needs it for tf.summary.
        'tensorboard==2.21.0',
        'numpy>=1.26,<3',
        'absl-py>=2.1',
        'pytest>=8',
        # The test command runs two workers (-n 2): most of the suite's time
        # is single-threaded tracing, and CI has 2 cores.
        'pytest-xdist>=3',
        'hypothesis>=6',
    ],
    extras_require={'examples': ['matplotlib']},
)
