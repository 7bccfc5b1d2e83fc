"""EVA: the collector of principal directions of layer inputs (`collector`, with its
linear algebra in `linalg`), rank redistribution (`ranks`) and results on disk, turned into
PEFT adapters (`state`)."""
