"""Test infrastructure shipped with the package (the tests in tests/ import it; the package never does).

* ``local_s3``: a local moto S3 server over HTTP; ``fault_proxy``: a fault-injecting proxy in front of one.
* ``endpoints``: ``S3Endpoint``, ``new_bucket``, the Ceph RGW of ``tools/ceph_dev.sh``, a moto server
  that checks signatures.
* ``conformance``: ``BackendConformance``, the suite every storage backend must pass.
* ``data``, ``shards``, ``tars``, ``tiny``: test data (JPEGs, source trees, tar shards, damaged tars, a tiny
  BLIP3o tree); ``tools``: run ``tools/*.py`` as a user does; ``paths``: the source checkout.
"""
