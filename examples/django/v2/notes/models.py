from django.db import models


class Note(models.Model):
    title = models.CharField(max_length=200)
    created = models.DateTimeField(auto_now_add=True)
    # v2: an expand migration: the column has a database default, so v1 (which does not
    # know it) still inserts rows
    done = models.BooleanField(default=False, db_default=False)

    def __str__(self) -> str:
        return self.title
