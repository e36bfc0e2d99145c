"""Built-in decoding profiles (TOML), installed as dlm_cli.builtin_profiles."""
