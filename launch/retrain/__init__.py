"""``captionbeam retrain``: a versioned model root that new images retrain and a gate promotes.

Modules, one job each (none imports :mod:`launch.commands.retrain`, the CLI on top):

- :mod:`.root`: the root's layout and state (versions, ``CURRENT``, ``root.json``, consumed batches)
- :mod:`.gate`: the promotion decision
- :mod:`.manifest`: the root's features (what is featurised, by sha256) and what has landed since
- :mod:`.data`: the root's captions and split files
- :mod:`.stages`: the typed calls of the features, captions, train and evaluate commands
- :mod:`.attempt`: one retraining attempt, one function per phase
- :mod:`.bootstrap`: ``--init``: a trained model becomes v001
- :mod:`.watch`: poll and retrain
"""
