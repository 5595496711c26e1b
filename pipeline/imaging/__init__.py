"""Per-element image work shared by sources/, render/ and caption/ (plain functions, no Beam
transforms): source image reading and decoding, instance masks as RLE, square windows and their cut,
and the decode-once loop over an image's rows."""
