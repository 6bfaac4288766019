"""How every output records where it came from: the `grow.json` record (`record`) and the model card built
from it (`card`)."""
