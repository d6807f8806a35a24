"""bundle stage: the self-contained, verifiable bundle.

build.py assembles it, manifest.py is its schema, verify.py is the one loader-side check every
consumer goes through. This file stays empty so that importing the manifest or the verifier
does not import the build code.
"""
