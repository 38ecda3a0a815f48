"""Tests of resnetkit.data (a package so helper modules import without name clashes)."""
