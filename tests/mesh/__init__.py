"""Tests of the local mesh (mesh/)."""
