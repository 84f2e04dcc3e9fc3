"""Readers and writers. numpy in and out; heavy libraries (SimpleITK, pydicom, ...) imported lazily; never torch."""
