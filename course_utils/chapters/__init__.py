"""Helpers that only one chapter needs, one module per chapter, named after it.

The core modules (``course_utils.data``, ``models``, ``engine``, ``training``, ...) hold what
several chapters use; a helper moves down into the core as soon as a second chapter needs it.
"""
