"""The volume installer: manifest -> verified environment on the network volume -> exec the worker."""
