"""crankmesh: a decentralized pub/sub bidding mesh."""
