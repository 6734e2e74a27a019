package controller

// The hold-off's numbers, for the tests' bounds.
const (
	UpdateBurst = updateBurst
	UpdateEvery = updateEvery
)
