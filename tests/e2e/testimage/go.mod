module modeldeploy.local/e2e-testimage

go 1.22
