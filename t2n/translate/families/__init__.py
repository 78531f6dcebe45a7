"""The op families; importing this package registers every built-in translator."""
from t2n.translate.families import (  # noqa: F401
    activation,
    attention,
    conv,
    creation,
    elementwise,
    index,
    linalg,
    norm,
    pool,
    quantize,
    reduce,
    rnn,
    shape,
    ssm,
)
