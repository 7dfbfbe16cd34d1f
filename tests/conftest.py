import pytest


@pytest.fixture(autouse=True, scope='session')
def _mmseg_scope():
    from mmseg.utils import register_all_modules

    import regproxy  # noqa: F401 registers our modules
    register_all_modules(init_default_scope=True)


@pytest.fixture
def http_files(tmp_path, monkeypatch):
    """A folder served over HTTP on 127.0.0.1 (python's ``http.server`` on a
    free port, in a thread), with torch hub's download cache in the test's
    own ``TORCH_HOME``.

    Yields:
        tuple: (folder to put files in, its URL ending in '/').
    """
    import functools
    import http.server
    import threading

    folder = tmp_path / 'served'
    folder.mkdir()
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))

    class QuietHandler(http.server.SimpleHTTPRequestHandler):

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ('127.0.0.1', 0),
        functools.partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f'http://127.0.0.1:{server.server_address[1]}/'
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
