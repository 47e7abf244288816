"""lmarc's built-in format plugins, loaded through the `lmarc` entry-point group like any other."""
