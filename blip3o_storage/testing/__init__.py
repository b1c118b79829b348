"""Test infrastructure shipped with the package: a local moto S3 server and a fault-injecting proxy."""
