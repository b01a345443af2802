"""`python -m export --model SRC [options] OUTPUT`: the `deepseek-v4-ov export` command (see
`deepseek_v4_ov.export.pipeline`)."""
